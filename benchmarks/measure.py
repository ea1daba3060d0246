"""Timing (torch.utils.benchmark) and peak memory of one configuration."""

from __future__ import annotations

import ctypes

import torch
import torch.utils.benchmark as benchmark
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.flop_counter import FlopCounterMode

import lstm_ext

from configs import Config


class CellLoop(nn.Module):
    """A Python loop over nn.LSTMCell: the baseline every fused LSTM must beat."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size)
        self.cell.load_state_dict({k[:-3]: v for k, v in lstm.state_dict().items()})

    def forward(self, x):
        h = c = x.new_zeros(x.shape[1], self.cell.hidden_size)
        out = []
        for x_t in x:
            h, c = self.cell(x_t, (h, c))
            out.append(h)
        return torch.stack(out), (h, c)


def models(config: Config, dtype: torch.dtype, device: str) -> dict[str, nn.Module]:
    """nn.LSTM, lstm_ext.LSTM (same weights), and the cell loop where it applies."""
    torch.manual_seed(0)
    kwargs = dict(num_layers=config.layers, bidirectional=config.bidirectional,
                  proj_size=config.proj, batch_first=config.batch_first)
    ref = nn.LSTM(config.I, config.H, **kwargs)
    ours = lstm_ext.LSTM(config.I, config.H, **kwargs)
    ours.load_state_dict(ref.state_dict())
    found = {"nn.LSTM": ref, "lstm_ext": ours}
    if (config.layers == 1 and not config.bidirectional and not config.proj
            and not config.packed and not config.batch_first):
        found["LSTMCell loop"] = CellLoop(ref)
    return {name: model.to(device, dtype) for name, model in found.items()}


def inputs(config: Config, dtype: torch.dtype, device: str):
    """The input (padded or packed), the number of rows of real work, and the
    sequence lengths (None when padded)."""
    gen = torch.Generator().manual_seed(0)
    shape = (config.B, config.T) if config.batch_first else (config.T, config.B)
    x = torch.randn(*shape, config.I, generator=gen).to(device, dtype)
    if not config.packed:
        return x.requires_grad_(), config.T * config.B, None
    lengths = torch.randint(config.T // 2, config.T + 1, (config.B,), generator=gen)
    packed = pack_padded_sequence(x, lengths, batch_first=config.batch_first,
                                  enforce_sorted=False)
    return packed._replace(data=packed.data.requires_grad_()), int(lengths.sum()), lengths


def _output(result):
    out = result[0]
    return out.data if hasattr(out, "batch_sizes") else out


def interleaved(fns: dict, min_run_time: float, rounds: int, label: str, sub_label: str):
    """Times each of `fns` (name: function) in `rounds` rounds of min_run_time /
    rounds seconds each, taking turns, so that a slow spell of a shared
    machine falls on all of them alike. Returns each one's Measurement of all
    its rounds, and the per-round times (name: [seconds])."""
    rounds_of = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            m = median_seconds(fn, min_run_time / rounds, label, sub_label, name)
            rounds_of[name].append(m)
    measurements = {name: benchmark.Measurement.merge(ms)[0] for name, ms in rounds_of.items()}
    return measurements, {name: [m.median for m in ms] for name, ms in rounds_of.items()}


def median_seconds(fn, min_run_time: float, label: str, sub_label: str, desc: str):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(),
                            label=label, sub_label=sub_label, description=desc)
    return timer.blocked_autorange(min_run_time=min_run_time)


def forward_fn(model, x):
    """Inference as it is run: eval mode (oneDNN and cuDNN then take their inference
    forward) and no grad."""
    model.eval()

    def run():
        with torch.no_grad():
            model(x)
    return run


def training_fn(model, x):
    """A training step: forward, backward and an in-place update of the parameters,
    so that nothing tied to their versions carries over from one step to the next."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)

    def run():
        _output(model(x)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


def flops(fn) -> int:
    """The FLOPs of one call as torch's FlopCounterMode counts them: lstm_ext's ops by
    the formulas registered with it, so that the benchmark and the counter agree."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _rss_peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_memory_bytes(fn) -> int:
    """Resident memory one call adds at its peak (Linux): freed heap memory is
    given back first (malloc_trim), so that what the call uses must be faulted
    in again, then the high-water mark (VmHWM) is reset and read after."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_bytes()
    fn()
    return max(0, _rss_peak_bytes() - before)


def peak_cuda_memory_bytes(fn) -> int:
    """Device memory one call adds at its peak, as the caching allocator counts it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before)


def mm_flops_per_second(config: Config, rows: int, dtype: torch.dtype, device: str,
                        min_run_time: float) -> float:
    """torch.mm on this configuration's input projection: what BLAS reaches here."""
    a = torch.randn(rows, config.I, dtype=dtype, device=device)
    b = torch.randn(config.I, 4 * config.H, dtype=dtype, device=device)
    m = median_seconds(lambda: torch.mm(a, b), min_run_time, "mm", "", "")
    return 2 * rows * config.I * 4 * config.H / m.median


def cuda_graph_forward_fn(model, x):
    """The forward (no grad) captured once in a CUDA graph, replayed per call: no
    Python and no launch overhead, what small batches are bound by otherwise."""
    static = x
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):  # warm-up outside the capture: cuBLAS handles, workspaces
            model(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(static)
    return graph.replay


def onnxruntime_forward_fn(model: nn.Module, x, lengths, threads: int, path):
    """nn.LSTM exported to ONNX (the TorchScript exporter, which takes packed input)
    and run by onnxruntime on `threads` threads; None where it cannot export the
    model or onnxruntime cannot load it (nn.LSTM with proj_size). Its thread pool
    does not spin between runs, so it takes no time from the torch timings that
    alternate with it."""
    import onnxruntime

    if model.proj_size:  # refused by nn.LSTM's ONNX export, after printing its whole graph
        return None
    args = (x.detach(),) if lengths is None else (pad_packed_sequence(x)[0].detach(), lengths)
    try:
        torch.onnx.export(_Exportable(model, lengths is not None), args, str(path),
                          dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001  (nn.LSTM's export fails on what it does not support)
        return None
    assert session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    return lambda: session.run(None, feeds)


class _Exportable(nn.Module):
    """The LSTM's output (padded again for packed input: ONNX takes packing only in
    pairs, as sequence lengths of its LSTM operator)."""

    def __init__(self, lstm: nn.Module, packed: bool):
        super().__init__()
        self.lstm, self.packed = lstm, packed

    def forward(self, x, lengths=None):
        if not self.packed:
            return self.lstm(x)[0]
        out = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))[0]
        return pad_packed_sequence(out)[0]
