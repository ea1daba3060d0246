"""lstm_ext.LSTM's options beyond nn.LSTM, in a training step, against plain
lstm_ext.LSTM and what users write today, in one process.

A training step is forward, backward and an in-place SGD update (measure.py's
training_fn), timed with torch.utils.benchmark, each model in turn for five
rounds; the table gives medians and each option's time over plain lstm_ext's
(the issue's target: at most 1.2x) and over today's way:

- weight_drop: nn.LSTM with its W_hh parametrized by dropout
  (torch.nn.utils.parametrize), which is how AWD-LSTM's weight drop is
  written without its flat-weights hack.
- recurrent_dropout: a Python loop of nn.LSTMCell, one per layer, h times a
  mask drawn per call where it enters the cell (nn.LSTM has no place for it).
- zoneout (zoneout_hidden = zoneout_cell = p): the same loop, each step's h
  and c mixed with the previous ones by masks drawn per step.
- layer_norm (no p): the same loop with haste's LayerNormLSTM cell written
  in PyTorch (layer_norm of both products and of c).

    python benchmarks/variants.py
    python benchmarks/variants.py --threads 1 --config "B=64,T=100,I=512,H=512"
"""

from __future__ import annotations

import pathlib
import statistics
import sys

import torch
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench  # noqa: E402
import configs  # noqa: E402
import measure  # noqa: E402

import lstm_ext  # noqa: E402

GRID = [configs.Config(32, 50, 256, 256), configs.Config(64, 100, 512, 512),
        configs.Config(20, 70, 400, 1150, layers=3)]
ROUNDS = 5


class DropWeight(nn.Module):
    """A parametrization: the weight dropped out while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, weight):
        return nn.functional.dropout(weight, self.p, self.training)


def weight_drop_models(config: configs.Config, p: float) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    kwargs = {"num_layers": config.layers, "bidirectional": config.bidirectional}
    plain = lstm_ext.LSTM(config.I, config.H, **kwargs)
    ours = lstm_ext.LSTM(config.I, config.H, **kwargs, weight_drop=p)
    theirs = nn.LSTM(config.I, config.H, **kwargs)
    for model in (ours, theirs):
        model.load_state_dict(plain.state_dict())
    for name, _ in list(theirs.named_parameters()):
        if name.startswith("weight_hh"):
            parametrize.register_parametrization(theirs, name, DropWeight(p))
    return {"lstm_ext": plain, "lstm_ext weight_drop": ours,
            "nn.LSTM, W_hh parametrized": theirs}


class SteppedCells(nn.Module):
    """What users write where nn.LSTM has no place for an option: nn.LSTMCell
    per layer, stepped in Python; `step` runs one cell's step (k: its layer)."""

    def __init__(self, lstm: nn.LSTM, p: float):
        super().__init__()
        self.loop, self.p = measure.CellLoop(lstm), p

    def begin(self, zeros):
        """Draws what a call's steps share."""

    def step(self, k, cell, x_t, h, c):
        raise NotImplementedError

    def forward(self, x):
        cells = self.loop.cells
        zeros = x.new_zeros(x.shape[1], cells[0].hidden_size)
        h, c = [zeros] * len(cells), [zeros] * len(cells)
        self.begin(zeros)
        out = []
        for x_t in x:
            for k, cell in enumerate(cells):
                h[k], c[k] = self.step(k, cell, x_t, h[k], c[k])
                x_t = h[k]
            out.append(x_t)
        return torch.stack(out), (torch.stack(h), torch.stack(c))


class MaskedCellLoop(SteppedCells):
    """Recurrent dropout: h ⊙ m / (1 - p) enters each step's cell, one m per
    layer and call."""

    def begin(self, zeros):
        self.masks = [nn.functional.dropout(torch.ones_like(zeros), self.p, self.training)
                      for _ in self.loop.cells]

    def step(self, k, cell, x_t, h, c):
        return cell(x_t, (h * self.masks[k], c))


def against_a_cell_loop(config: configs.Config, name: str, loop: nn.Module,
                        **options) -> dict[str, nn.Module]:
    """Plain lstm_ext, lstm_ext with `options` and `loop` (a SteppedCells
    class, given p) on one nn.LSTM's weights."""
    torch.manual_seed(0)
    plain = lstm_ext.LSTM(config.I, config.H, num_layers=config.layers)
    ours = lstm_ext.LSTM(config.I, config.H, num_layers=config.layers, **options)
    ours.load_state_dict(plain.state_dict(), strict=False)  # LayerNorm's own stay
    reference = nn.LSTM(config.I, config.H, num_layers=config.layers)
    reference.load_state_dict(plain.state_dict())
    return {"lstm_ext": plain, f"lstm_ext {name}": ours, f"LSTMCell loop, {name}": loop(reference)}


def recurrent_dropout_models(config: configs.Config, p: float) -> dict[str, nn.Module]:
    return against_a_cell_loop(config, "recurrent_dropout",
                               lambda lstm: MaskedCellLoop(lstm, p), recurrent_dropout=p)


class ZoneoutCellLoop(SteppedCells):
    """Zoneout: each step's new h and c kept where a Bernoulli(p) mask drawn
    for that step says (the previous ones there)."""

    def step(self, k, cell, x_t, h, c):
        h_new, c_new = cell(x_t, (h, c))
        d_h, d_c = (torch.rand_like(h) < self.p for _ in range(2))
        return torch.where(d_h, h, h_new), torch.where(d_c, c, c_new)


def zoneout_models(config: configs.Config, p: float) -> dict[str, nn.Module]:
    return against_a_cell_loop(config, "zoneout", lambda lstm: ZoneoutCellLoop(lstm, p),
                               zoneout_hidden=p, zoneout_cell=p)


class LayerNormCellLoop(SteppedCells):
    """LayerNorm LSTM as users write it (haste's formula): per step and layer,
    LN of x W_ih^T and of h W_hh^T over the gates, LN of c before its tanh."""

    def __init__(self, lstm: nn.LSTM, p: float):
        super().__init__(lstm, p)  # p unused
        self.norms = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(4 * cell.hidden_size, bias=False),
                           nn.LayerNorm(4 * cell.hidden_size, bias=False),
                           nn.LayerNorm(cell.hidden_size)]) for cell in self.loop.cells)

    def step(self, k, cell, x_t, h, c):
        ln_ih, ln_hh, ln_c = self.norms[k]
        gates = (ln_ih(x_t @ cell.weight_ih.t()) + ln_hh(h @ cell.weight_hh.t()) + cell.bias_ih
                 + cell.bias_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * ln_c(c).tanh(), c


def layer_norm_models(config: configs.Config, p: float) -> dict[str, nn.Module]:
    return against_a_cell_loop(config, "layer_norm", lambda lstm: LayerNormCellLoop(lstm, p),
                               layer_norm=True)


OPTIONS = {"weight_drop": weight_drop_models, "recurrent_dropout": recurrent_dropout_models,
           "zoneout": zoneout_models, "layer_norm": layer_norm_models}


def main() -> None:
    parser = bench.comparison_parser(__doc__)
    parser.add_argument("--p", type=float, default=0.5, help="the options' probability")
    args = parser.parse_args()
    bench.begin(args)
    print("| config | option | lstm_ext ms | with the option ms | / lstm_ext "
          "| today's way ms | today's / option |\n|---|---|---:|---:|---:|---:|---:|")
    for config in args.config or GRID:
        x, _, _ = measure.inputs(config, torch.float32, "cpu")
        for option, make in OPTIONS.items():
            models = make(config, args.p)
            fns = {name: measure.training_fn(model, x) for name, model in models.items()}
            for fn in fns.values():
                fn()
            _, per_round = measure.interleaved(fns, args.min_run_time, ROUNDS, "variants",
                                               f"{config.name} {option}")
            ms = [statistics.median(per_round[n]) * 1e3 for n in models]
            plain, ours, today = (per_round[n] for n in models)
            over_plain = statistics.median(a / b for a, b in zip(ours, plain))
            over_today = statistics.median(a / b for a, b in zip(today, ours))
            label = option if option == "layer_norm" else f"{option}={args.p}"  # LN has no p
            print(f"| {config.name} | {label} | {ms[0]:.1f} | {ms[1]:.1f} "
                  f"| {over_plain:.2f}x | {ms[2]:.1f} | {over_today:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
