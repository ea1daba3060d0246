"""lstm_ext.LSTM against torch.nn.LSTM and an nn.LSTMCell loop, in one process.

For every configuration, forward (no grad) and forward+backward are timed with
torch.utils.benchmark on the same weights and input; the table gives medians,
the speedup over nn.LSTM (> 1 is faster), the GF/s lstm_ext reaches and its
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
import sys

import torch
import torch.utils.benchmark as benchmark
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import configs  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


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
        ms, peak = {}, {}
        for name, model in models.items():
            fn = make(model, x)
            fn()  # warm-up: kernels JIT-compiled, caches filled
            m = measure.median_seconds(fn, min_run_time, "LSTM", f"{config.name} {mode}", name)
            timings.append(m)
            ms[name] = m.median * 1e3
            peak[name] = measure.peak_memory_bytes(fn) / 2**20
        gflops = work / (ms["lstm_ext"] * 1e-3) / 1e9
        results.append(dict(config=config.name, mode=mode, ms=ms, speedup=ms["nn.LSTM"] / ms["lstm_ext"],
                            gflops=gflops, of_mm=gflops * 1e9 / mm, mm_gflops=mm / 1e9,
                            peak_mb=peak))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole grid (about 10 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per measurement (default 0.5 quick, 2 full)")
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
                command="python benchmarks/bench.py" + (" --full" if args.full else ""))
    header = (f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, "
              f"{meta['date']} ({meta['grid']} grid)")
    benchmark.Compare(timings).print()
    table = f"{report.markdown(rows)}\n\n{report.summary(rows)}"
    print(f"\n{header}\n\n{table}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench.md").write_text(f"{header}\n\n{table}\n")
    report.write_json(rows, meta, RESULTS / "bench.json")
    report.plot(rows, RESULTS / "bench.png", header)
    print(f"\nwrote {RESULTS}/bench.md, bench.json, bench.png")


if __name__ == "__main__":
    main()
