"""What the profiler labels cost when no profiler runs: a 4-layer bidirectional
lstm_ext.LSTM on one step of one sequence (8 ranges, where the fixed cost of a
call weighs most), as shipped (a range only while a profiler runs) against
every range entered regardless, and against no label code at all.

    python benchmarks/profiler_labels.py
"""

from __future__ import annotations

import contextlib
import pathlib
import statistics
import sys

import torch

import lstm_ext
from lstm_ext import functional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import measure  # noqa: E402


def main():
    torch.set_num_threads(2)
    lstm = lstm_ext.LSTM(16, 16, num_layers=4, bidirectional=True)
    x = torch.randn(1, 1, 16)
    shipped = functional._profiler_label

    def always(layer, direction):
        return torch.autograd.profiler.record_function(f"layer {layer} {direction}")

    def none(layer, direction):
        return contextlib.nullcontext()

    def run_with(label):
        def run():
            functional._profiler_label = label
            with torch.no_grad():
                lstm(x)
        return run

    fns = {"as shipped": run_with(shipped), "ranges always entered": run_with(always),
           "no label code": run_with(none)}
    _, per_round = measure.interleaved(fns, 10.0, 10, "labels", "")
    functional._profiler_label = shipped
    base = statistics.median(per_round["no label code"])
    for name, times in per_round.items():
        median = statistics.median(times)
        print(f"{name:>22}: {median * 1e6:7.1f} us per forward "
              f"({(median - base) * 1e6:+.1f} us against no label code)")


if __name__ == "__main__":
    main()
