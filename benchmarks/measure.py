"""Timing (torch.utils.benchmark) and peak memory of one configuration."""

from __future__ import annotations

import ctypes

import torch
import torch.utils.benchmark as benchmark
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

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


def models(config: Config) -> dict[str, nn.Module]:
    """nn.LSTM, lstm_ext.LSTM (same weights), and the cell loop where it applies."""
    torch.manual_seed(0)
    kwargs = dict(num_layers=config.layers, bidirectional=config.bidirectional,
                  proj_size=config.proj)
    ref = nn.LSTM(config.I, config.H, **kwargs)
    ours = lstm_ext.LSTM(config.I, config.H, **kwargs)
    ours.load_state_dict(ref.state_dict())
    found = {"nn.LSTM": ref, "lstm_ext": ours}
    if config.layers == 1 and not config.bidirectional and not config.proj and not config.packed:
        found["LSTMCell loop"] = CellLoop(ref)
    return found


def inputs(config: Config):
    """The input (padded or packed) and the number of rows of real work."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(config.T, config.B, config.I, generator=gen)
    if not config.packed:
        return x.requires_grad_(), config.T * config.B
    lengths = torch.randint(config.T // 2, config.T + 1, (config.B,), generator=gen)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    return packed._replace(data=packed.data.requires_grad_()), int(lengths.sum())


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
    def run():
        with torch.no_grad():
            model(x)
    return run


def training_fn(model, x):
    def run():
        _output(model(x)).sum().backward()
    return run


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


def mm_flops_per_second(config: Config, rows: int, min_run_time: float) -> float:
    """torch.mm on this configuration's input projection: what BLAS reaches here."""
    a, b = torch.randn(rows, config.I), torch.randn(config.I, 4 * config.H)
    m = median_seconds(lambda: torch.mm(a, b), min_run_time, "mm", "", "")
    return 2 * rows * config.I * 4 * config.H / m.median
