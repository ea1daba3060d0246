"""lstm_ext.LSTM against torch.nn.LSTM and an nn.LSTMCell loop, in one process.

For every configuration, forward (no grad) and forward+backward are timed with
torch.utils.benchmark on the same weights and input, taking turns (five rounds
each, so that a slow spell of a shared machine falls on all alike); the table
gives medians, the speedup over nn.LSTM (> 1 is faster; the median of the
rounds' ratios), the GF/s lstm_ext reaches (its FLOPs as FlopCounterMode counts
them) and its share of what torch.mm reaches on the same machine and run, and
peak resident memory. A forward+backward row is a training step: it ends with
an optimizer's in-place update of the parameters. Writes
benchmarks/results/bench.{md,json,png}.

Forward rows add, on the CPU in float32 where onnxruntime is installed, nn.LSTM
exported to ONNX and run by onnxruntime on the same threads (what an LSTM is
deployed with), and on a GPU our forward replayed from a CUDA graph. Decode
rows (hx: one step, or a short chunk, from a given state, no gradient) have
only that forward, against a stacked nn.LSTMCell loop too, and torch.mm
reading the same weights once. On a GPU the times are synchronised
(torch.utils.benchmark does it) and memory is the caching allocator's peak.
lstm_ext's memory adds the weights' layouts it keeps between inference calls.

    python benchmarks/bench.py          # quick grid (make bench)
    python benchmarks/bench.py --full   # the whole grid
    python benchmarks/bench.py --decode # decode steps (T=1 with hx, no grad)
    python benchmarks/bench.py --config "B=5,T=40,I=24,H=48,layers=2,packed" --dtype bfloat16
    python benchmarks/bench.py --device cuda --dtype bfloat16   # the GPU grid
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import pathlib
import platform
import shlex
import statistics
import sys
import tempfile

import torch
import torch.utils.benchmark as benchmark

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


@dataclasses.dataclass
class Setting:
    dtype: torch.dtype
    device: str
    threads: int
    min_run_time: float
    scratch: pathlib.Path  # for exported ONNX models


def run(config: configs.Config, setting: Setting, timings: list) -> list[dict]:
    dtype, device = setting.dtype, setting.device
    models = measure.models(config, dtype, device)
    x, rows, lengths = measure.inputs(config, dtype, device)
    hx = measure.state(config, dtype, device)
    mm = measure.mm_flops_per_second(config, rows, dtype, device, setting.min_run_time)
    peak_bytes = measure.peak_cuda_memory_bytes if device == "cuda" else measure.peak_memory_bytes
    modes = ((("decode", lambda model, x: measure.forward_fn(model, x, hx)),) if config.hx else
             (("forward", measure.forward_fn), ("forward+backward", measure.training_fn)))
    results = []
    for mode, make in modes:
        fns = {name: make(model, x) for name, model in models.items()}
        work = measure.flops(fns["lstm_ext"])
        if mode != "forward+backward":
            fns.update(extra_forward_fns(config, models, x, lengths, hx, setting))
        peak = {}
        for name, fn in fns.items():
            fn()  # warm-up: kernels JIT-compiled, caches filled
            peak[name] = peak_bytes(fn) / 2**20
        # What lstm_ext keeps between calls: the weights' layouts of inference.
        peak["lstm_ext"] += models["lstm_ext"].layout_cache_bytes() / 2**20
        measurements, per_round = measure.interleaved(fns, setting.min_run_time, ROUNDS, "LSTM",
                                                      f"{config.name} {mode}")
        timings += measurements.values()
        ms = {name: statistics.median(t) * 1e3 for name, t in per_round.items()}
        speedup = statistics.median(
            a / b for a, b in zip(per_round["nn.LSTM"], per_round["lstm_ext"]))
        gflops = work / (ms["lstm_ext"] * 1e-3) / 1e9
        results.append(dict(config=config.name, mode=mode, ms=ms, speedup=speedup,
                            gflops=gflops, of_mm=gflops * 1e9 / mm, mm_gflops=mm / 1e9,
                            peak_mb=peak, flops=work))
    return results


def extra_forward_fns(config, models, x, lengths, hx, setting: Setting) -> dict:
    """Forward-only columns: on a GPU, our forward replayed from a CUDA graph; on
    the CPU in float32, nn.LSTM exported to ONNX and run by onnxruntime, where it
    is installed and nn.LSTM's export works; for a decode row, torch.mm reading
    the same weights once (its floor)."""
    fns = {}
    if config.hx:
        fns["torch.mm, weights once"] = measure.weights_once_fn(config, setting.dtype,
                                                                setting.device)
    if setting.device == "cuda":
        if not config.hx:
            fns["lstm_ext CUDA graph"] = measure.cuda_graph_forward_fn(models["lstm_ext"], x)
        return fns
    if setting.dtype != torch.float32 or importlib.util.find_spec("onnxruntime") is None:
        return fns
    fn = measure.onnxruntime_forward_fn(models["nn.LSTM"], x, lengths, setting.threads,
                                        setting.scratch / "lstm.onnx", hx)
    if fn is not None:
        fns["onnxruntime"] = fn
    return fns


DTYPES = {name: getattr(torch, name) for name in ("float32", "float64", "bfloat16", "float16")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="the whole grid (about 10 minutes on the CPU)")
    parser.add_argument("--decode", action="store_true",
                        help="the decode steps' grid: T=1 (and a T=4 chunk) with hx, no grad")
    parser.add_argument("--config", action="append", type=config_arg, default=[],
                        metavar="SPEC", help="in place of the grid (repeatable): e.g. "
                        '"B=5,T=40,I=24,H=48,layers=2,bidirectional,packed,proj=8,batch_first"')
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per measurement (default 0.5 quick, 2 full; CUDA 0.5)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                        help=f"folder for bench.md, bench.json, bench.png (default {RESULTS})")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU")
    torch.set_num_threads(args.threads)
    if args.config:
        grid, name = args.config, "custom"
    elif args.decode:
        grid, name = configs.DECODE, "decode"
    elif args.device == "cuda":
        grid, name = configs.CUDA_GRID, "CUDA"
    else:
        grid, name = (configs.GRID, "full") if args.full else (configs.QUICK, "quick")
    full_cpu = args.full and args.device == "cpu"
    min_run_time = args.min_run_time or (2.0 if full_cpu else 0.5)

    if args.device == "cuda":
        # The same math on both sides: cuDNN would otherwise run float32 as TF32,
        # where our products are float32.
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
                dtype=args.dtype, device=args.device, threads=args.threads, machine=machine,
                cpu=cpu_name(), cores=os.cpu_count(), grid=name, tf32=False, command=" ".join(
                    ["python benchmarks/bench.py", *map(shlex.quote, sys.argv[1:])]))
    header = (f"{machine}, {args.dtype}, {meta['threads']} threads, torch {meta['torch']}, "
              f"{meta['date']} ({name} grid)")
    args.out.mkdir(parents=True, exist_ok=True)

    def write(rows):
        """bench.md and bench.json so far: a run cut short keeps what it measured."""
        table = f"{report.markdown(rows)}\n\n{report.summary(rows)}"
        (args.out / "bench.md").write_text(f"{header}\n\n{table}\n")
        report.write_json(rows, meta, args.out / "bench.json")
        return table

    rows, timings = [], []
    with tempfile.TemporaryDirectory() as scratch:
        setting = Setting(DTYPES[args.dtype], args.device, args.threads, min_run_time,
                          pathlib.Path(scratch))
        for k, config in enumerate(grid):
            print(f"[{k + 1}/{len(grid)}] {config.name}", flush=True)
            rows += run(config, setting, timings)
            table = write(rows)

    benchmark.Compare(timings).print()
    print(f"\n{header}\n\n{table}")
    wrote = ["bench.md", "bench.json"]
    if report.plot(rows, args.out / "bench.png", header):
        wrote.append("bench.png")
    print(f"\nwrote {', '.join(wrote)} in {args.out}")


def comparison_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of the scripts that time a few models in turn on a list
    of configurations (variants.py, private.py)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", type=config_arg, default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    return parser


def begin(args: argparse.Namespace) -> None:
    """Sets the threads and prints what the table's figures are of (float32)."""
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, float32, {args.threads} threads, torch {torch.__version__}\n")


def config_arg(text: str) -> configs.Config:
    try:
        return configs.Config.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


if __name__ == "__main__":
    main()
