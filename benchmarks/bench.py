"""lstm_ext against torch.nn.LSTM in one process, as ratios.

Times one LSTM layer, forward (no grad) and forward+backward, with
torch.utils.benchmark on the same weights and input, and prints a markdown
table of medians and speedups (nn.LSTM time / lstm_ext time; > 1 is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform

import torch
import torch.utils.benchmark as benchmark
from tqdm import tqdm

import lstm_ext

QUICK = [(1, 100, 64, 64), (32, 100, 256, 256), (64, 100, 512, 512)]
FULL = QUICK + [(8, 500, 128, 128), (128, 35, 1024, 1024)]


@dataclasses.dataclass
class Row:
    config: str
    mode: str
    torch_ms: float
    ours_ms: float

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.ours_ms


def median_ms(stmt, env, min_run_time) -> float:
    timer = benchmark.Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def bench_layer(B, T, I, H, min_run_time) -> list[Row]:  # noqa: E741
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    weights = [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0]
    x = torch.randn(T, B, I, requires_grad=True)
    env = dict(torch=torch, ref=ref, x=x, w=weights, lstm_layer=lstm_ext.lstm_layer)
    ours, theirs = "lstm_layer(x, None, *w)[0]", "ref(x)[0]"
    config = f"B={B} T={T} I={I} H={H}"
    rows = []
    for mode, wrap in [
        ("forward", "with torch.no_grad(): {}"),
        ("forward+backward", "{}.sum().backward()"),
    ]:
        rows.append(
            Row(
                config,
                mode,
                median_ms(wrap.format(theirs), env, min_run_time),
                median_ms(wrap.format(ours), env, min_run_time),
            )
        )
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| config (1 layer, fp32) | mode | nn.LSTM ms | lstm_ext ms | speedup |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r.config} | {r.mode} | {r.torch_ms:.3f} | {r.ours_ms:.3f} | {r.speedup:.2f}x |"
        for r in rows
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole grid (slower)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = FULL if args.full else QUICK
    rows = []
    for shape in tqdm(grid, desc="benchmark", unit="config"):
        rows += bench_layer(*shape, args.min_run_time)
    print(f"\ntorch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
