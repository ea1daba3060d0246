"""lstm_ext.LSTM against torch.nn.LSTM and an nn.LSTMCell loop, in one process.

For every configuration, forward (no grad) and forward+backward are timed with
torch.utils.benchmark on the same weights and input, taking turns (five rounds
each, so that a slow spell of a shared machine falls on all alike); the table
gives medians, the speedup over nn.LSTM (> 1 is faster; the median of the
rounds' ratios), the GF/s lstm_ext reaches and its
share of what torch.mm reaches on the same machine and run, and peak resident
memory. Writes benchmarks/results/bench.{md,json,png}.

    python benchmarks/bench.py          # quick grid (make bench)
    python benchmarks/bench.py --full   # the whole grid
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys

import torch
import torch.utils.benchmark as benchmark
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import configs  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# Each implementation is timed in this many turns (measure.interleaved); the
# speedup is the median of the turns' ratios.
ROUNDS = 5


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(config: configs.Config, min_run_time: float, timings: list) -> list[dict]:
    models = measure.models(config)
    x, rows = measure.inputs(config)
    mm = measure.mm_flops_per_second(config, rows, min_run_time)
    results = []
    for mode, make, work in (
        ("forward", measure.forward_fn, config.forward_flops(rows)),
        ("forward+backward", measure.training_fn, 3 * config.forward_flops(rows)),
    ):
        fns = {name: make(model, x) for name, model in models.items()}
        peak = {}
        for name, fn in fns.items():
            fn()  # warm-up: kernels JIT-compiled, caches filled
            peak[name] = measure.peak_memory_bytes(fn) / 2**20
        measurements, per_round = measure.interleaved(fns, min_run_time, ROUNDS, "LSTM",
                                                      f"{config.name} {mode}")
        timings += measurements.values()
        ms = {name: statistics.median(t) * 1e3 for name, t in per_round.items()}
        speedup = statistics.median(
            a / b for a, b in zip(per_round["nn.LSTM"], per_round["lstm_ext"]))
        gflops = work / (ms["lstm_ext"] * 1e-3) / 1e9
        results.append(dict(config=config.name, mode=mode, ms=ms, speedup=speedup,
                            gflops=gflops, of_mm=gflops * 1e9 / mm, mm_gflops=mm / 1e9,
                            peak_mb=peak))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole grid (about 10 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per measurement (default 0.5 quick, 2 full)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                        help=f"folder for bench.md, bench.json, bench.png (default {RESULTS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = configs.GRID if args.full else configs.QUICK
    min_run_time = args.min_run_time or (2.0 if args.full else 0.5)

    rows, timings = [], []
    for config in tqdm(grid, desc="benchmark", unit="config"):
        rows += run(config, min_run_time, timings)

    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
                threads=args.threads, cpu=cpu_name(), cores=os.cpu_count(),
                grid="full" if args.full else "quick",
                command="python benchmarks/bench.py" + (" --full" if args.full else "")
                + (f" --threads {args.threads}" if args.threads != 2 else ""))
    header = (f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, "
              f"{meta['date']} ({meta['grid']} grid)")
    benchmark.Compare(timings).print()
    table = f"{report.markdown(rows)}\n\n{report.summary(rows)}"
    print(f"\n{header}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(f"{header}\n\n{table}\n")
    report.write_json(rows, meta, args.out / "bench.json")
    report.plot(rows, args.out / "bench.png", header)
    print(f"\nwrote {args.out}/bench.md, bench.json, bench.png")


if __name__ == "__main__":
    main()
