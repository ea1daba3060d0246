"""lstm_ext.LSTM's options beyond nn.LSTM, in a training step, against plain
lstm_ext.LSTM and what users write today, in one process.

A training step is forward, backward and an in-place SGD update (measure.py's
training_fn), timed with torch.utils.benchmark, each model in turn for five
rounds; the table gives medians and each option's time over plain lstm_ext's
(the issue's target: at most 1.2x) and over today's way:

- weight_drop: nn.LSTM with its W_hh parametrized by dropout
  (torch.nn.utils.parametrize), which is how AWD-LSTM's weight drop is
  written without its flat-weights hack.

    python benchmarks/variants.py
    python benchmarks/variants.py --threads 1 --config "B=64,T=100,I=512,H=512"
"""

from __future__ import annotations

import argparse
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
    kwargs = dict(num_layers=config.layers, bidirectional=config.bidirectional)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", type=bench.config_arg, default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--p", type=float, default=0.5, help="the options' probability")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{bench.cpu_name()}, float32, {args.threads} threads, torch {torch.__version__}\n")
    print("| config | option | lstm_ext ms | with the option ms | / lstm_ext "
          "| today's way ms | today's / option |\n|---|---|---:|---:|---:|---:|---:|")
    for config in args.config or GRID:
        models = weight_drop_models(config, args.p)
        x, _, _ = measure.inputs(config, torch.float32, "cpu")
        fns = {name: measure.training_fn(model, x) for name, model in models.items()}
        for fn in fns.values():
            fn()
        _, per_round = measure.interleaved(fns, args.min_run_time, ROUNDS, "variants",
                                           config.name)
        ms = {name: statistics.median(t) * 1e3 for name, t in per_round.items()}
        plain, option, today = (per_round[n] for n in models)
        over_plain = statistics.median(a / b for a, b in zip(option, plain))
        over_today = statistics.median(a / b for a, b in zip(today, option))
        names = list(models)
        print(f"| {config.name} | weight_drop={args.p} | {ms[names[0]]:.1f} | {ms[names[1]]:.1f} "
              f"| {over_plain:.2f}x | {ms[names[2]]:.1f} | {over_today:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
