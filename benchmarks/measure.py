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
    """A Python loop over nn.LSTMCell, one cell per layer: the baseline every
    fused LSTM must beat, and what a decoder is often written as."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.cells = nn.ModuleList(
            nn.LSTMCell(lstm.input_size if k == 0 else lstm.hidden_size, lstm.hidden_size)
            for k in range(lstm.num_layers))
        state = lstm.state_dict()
        for k, cell in enumerate(self.cells):
            cell.load_state_dict({name: state[f"{name}_l{k}"] for name in cell.state_dict()})

    def forward(self, x, hx=None):
        if hx is None:
            zeros = x.new_zeros(len(self.cells), x.shape[1], self.cells[0].hidden_size)
            hx = (zeros, zeros)
        h, c = list(hx[0]), list(hx[1])
        out = []
        for x_t in x:
            for k, cell in enumerate(self.cells):
                h[k], c[k] = cell(x_t, (h[k], c[k]))
                x_t = h[k]
            out.append(x_t)
        return torch.stack(out), (torch.stack(h), torch.stack(c))


def models(config: Config, dtype: torch.dtype, device: str) -> dict[str, nn.Module]:
    """nn.LSTM, lstm_ext.LSTM (same weights), and the cell loop where it applies."""
    torch.manual_seed(0)
    kwargs = dict(num_layers=config.layers, bidirectional=config.bidirectional,
                  proj_size=config.proj, batch_first=config.batch_first)
    ref = nn.LSTM(config.I, config.H, **kwargs)
    ours = lstm_ext.LSTM(config.I, config.H, **kwargs)
    ours.load_state_dict(ref.state_dict())
    found = {"nn.LSTM": ref, "lstm_ext": ours}
    if not (config.bidirectional or config.proj or config.packed or config.batch_first):
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


def state(config: Config, dtype: torch.dtype, device: str):
    """The initial (h0, c0) of a decode row, else None."""
    if not config.hx:
        return None
    gen = torch.Generator().manual_seed(1)
    shape = (config.layers * (2 if config.bidirectional else 1), config.B)
    return (torch.randn(*shape, config.proj or config.H, generator=gen).to(device, dtype),
            torch.randn(*shape, config.H, generator=gen).to(device, dtype))


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


def forward_fn(model, x, hx=None):
    """Inference as it is run: eval mode (oneDNN and cuDNN then take their inference
    forward) and no grad; a decode row passes the state."""
    model.eval()

    def run():
        with torch.no_grad():
            model(x, hx)
    return run


def weights_once_fn(config: Config, dtype: torch.dtype, device: str):
    """torch.mm reading each layer's and direction's weights once: a row of
    [x, h] (B rows) by [W_ih, W_hh]^T (and h by W_hr^T with a projection), the
    floor of a decode step, where the weights are the bytes to read."""
    gen = torch.Generator().manual_seed(2)
    directions, out = 2 if config.bidirectional else 1, config.proj or config.H
    products = []
    for k in range(config.layers):
        inputs = config.I if k == 0 else directions * out
        for _ in range(directions):
            products.append((torch.randn(config.B, inputs + out, generator=gen),
                             torch.randn(inputs + out, 4 * config.H, generator=gen)))
            if config.proj:
                products.append((torch.randn(config.B, config.H, generator=gen),
                                 torch.randn(config.H, config.proj, generator=gen)))
    products = [(a.to(device, dtype), b.to(device, dtype)) for a, b in products]

    def run():
        for a, b in products:
            torch.mm(a, b)
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


def onnxruntime_forward_fn(model: nn.Module, x, lengths, threads: int, path, hx=None):
    """nn.LSTM exported to ONNX (the TorchScript exporter, which takes packed input)
    and run by onnxruntime on `threads` threads, with the state as inputs for a
    decode row; None where it cannot export the model or onnxruntime cannot load
    it (nn.LSTM with proj_size). Its thread pool does not spin between runs, so
    it takes no time from the torch timings that alternate with it."""
    import onnxruntime

    if model.proj_size:  # refused by nn.LSTM's ONNX export, after printing its whole graph
        return None
    if hx is not None:
        args = (x.detach(), hx[0], hx[1])
    else:
        args = (x.detach(),) if lengths is None else (pad_packed_sequence(x)[0].detach(), lengths)
    try:
        torch.onnx.export(_Exportable(model, lengths is not None, hx is not None), args,
                          str(path), dynamo=False)
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
    pairs, as sequence lengths of its LSTM operator); with the state, its output
    and final state from the state given."""

    def __init__(self, lstm: nn.Module, packed: bool, with_state: bool):
        super().__init__()
        self.lstm, self.packed, self.with_state = lstm, packed, with_state

    def forward(self, x, *rest):
        if self.with_state:
            y, (h_n, c_n) = self.lstm(x, tuple(rest))
            return y, h_n, c_n
        if not self.packed:
            return self.lstm(x)[0]
        lengths = rest[0]
        out = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))[0]
        return pad_packed_sequence(out)[0]
