"""Where a large-batch call's time goes, phase by phase, for lstm_ext and nn.LSTM.

lstm_ext's phases come from the CPU executor's own clock (csrc/cpu/profile.h,
read through the test op _cpu_profile): the weights' layout, the whole-block
products (input projection; the input gradient), the time loop's wall time
and, inside it, the thread time of the step products and the cell passes,
the weight gradients, the rest of the kernels' time (allocations, the bias
gradient, final states), and the time outside them (Python, autograd,
dispatch: the wall time less the innermost lstm_ext ops' in
torch.profiler's record of the same call). Each product phase gets its GF/s
(per thread inside the loop) next to the same product alone on the same shapes
(_cpu_product with repeats, operands hot), what brgemm reaches without the
loop around it. nn.LSTM's phases are oneDNN's primitive times
(ONEDNN_VERBOSE=profile_exec, in a child process): the RNN primitive (its
whole loop), the weight reorders, and the rest of its call.

    python benchmarks/phases.py                       # the large-batch rows
    python benchmarks/phases.py --dtype bfloat16 --threads 1
    python benchmarks/phases.py --config "B=96,T=30,I=768,H=768"
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench  # noqa: E402
import configs  # noqa: E402
import measure  # noqa: E402

import lstm_ext  # noqa: E402,F401  (registers the ops)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LARGE = [configs.Config(32, 100, 256, 256), configs.Config(16, 100, 512, 512),
         configs.Config(64, 100, 512, 512), configs.Config(96, 30, 768, 768),
         configs.Config(128, 35, 1024, 1024)]
CALLS = 5


def profile(on: bool) -> dict[str, tuple[float, int, int]]:
    """The executor's counts since the last call: kind -> (ms, calls, flops)."""
    names, counts = torch.ops.lstm_ext._cpu_profile(on)
    return {n: (c[0] / 1e6, c[1], c[2]) for n, c in zip(names, counts.tolist())}


def profiled(fn):
    """fn() with the profile on: its result, wall ms and counts, with the ms
    spent in lstm_ext's kernels as the kind "kernels": the innermost
    lstm_ext:: ops of torch.profiler's events (the outer ones are the
    autograd kernels above them), recorded in the same call (a few
    microseconds per op recorded)."""
    profile(True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        result = fn()
        wall = (time.perf_counter() - start) * 1e3
    counts = profile(False)
    ops = [e for e in prof.events() if e.name.startswith("lstm_ext::")]
    outer = set()
    for e in ops:
        parent = e.cpu_parent
        while parent is not None:
            outer.add(id(parent))
            parent = parent.cpu_parent
    kernels = sum(e.cpu_time_total for e in ops if id(e) not in outer) / 1e3
    return result, wall, dict(counts, kernels=(kernels, 0, 0))


def mean(calls: list[tuple[float, dict]]) -> tuple[float, dict]:
    """The mean wall ms and counts of (wall, counts) pairs. Means, not
    medians: the phases must add up to the wall time."""
    kinds = calls[0][1]
    return (statistics.mean(wall for wall, _ in calls),
            {k: tuple(statistics.mean(c[k][i] for _, c in calls) for i in range(3))
             for k in kinds})


def standalone_gflops(kind: str, m: int, n: int, k: int, dtype, threads: int) -> float:
    """GF/s of one of the executor's products alone, repeated on the same
    operands, on `threads` threads: the time of 1 + R runs less that of 1."""
    torch.set_num_threads(threads)
    a = torch.randn(k, m) if kind == "weight" else torch.randn(m, k)
    a, b = a.to(dtype), torch.randn(k, n).to(dtype)
    reps = min(1000, max(2, int(2e9 / (2 * m * n * k))))

    def run(r):
        start = time.perf_counter()
        torch.ops.lstm_ext._cpu_product(a, b, kind, repeat=r)
        return time.perf_counter() - start
    run(1)
    once = min(run(1) for _ in range(3))
    many = min(run(1 + reps) for _ in range(3))
    return 2 * m * n * k * reps / max(many - once, 1e-9) / 1e9


def ours(config: configs.Config, dtype, threads: int) -> dict:
    """lstm_ext's phases per call: inference (eval, no grad), then the forward
    and the backward of training, each profiled on its own; and the products
    alone on the loop's shapes."""
    torch.set_num_threads(threads)
    model = measure.models(config, dtype, "cpu")["lstm_ext"]
    x, _, _ = measure.inputs(config, dtype, "cpu")
    dy = torch.randn(config.T, config.B, config.H).to(dtype)
    model.eval()

    def infer():
        with torch.no_grad():
            model(x)
    profiled(infer)
    inference = [profiled(infer)[1:] for _ in range(CALLS)]
    model.train()
    model(x)[0].backward(dy)
    forward, backward = [], []
    for _ in range(CALLS):
        out, *counted = profiled(lambda: model(x)[0])
        forward.append(counted)
        backward.append(profiled(lambda: out.backward(dy))[1:])
    per_thread = -(-config.B // threads)
    G, P = 4 * config.H, config.H
    # A block of steps as step_engine.h's block_rows makes it: 2 MB of gates,
    # at least 512 rows and one step.
    block = min(config.T * config.B, max((1 << 19) // G, 512, config.B))
    # The products' own type: bfloat16 where it runs natively, else the
    # float32 of the upcast path.
    native = dtype == torch.float32 or torch.ops.lstm_ext.cpu_native(dtype)
    operands = dtype if native else torch.float32
    # The step products alone as the split by sequences runs them (the large
    # batches' split): a thread's rows by all of W_hh.
    alone = {
        "step_gemm": standalone_gflops("step", per_thread, G, P, operands, 1),
        "sequence_gemm": standalone_gflops("sequence", block, G, config.I, operands, threads),
        "weight_gemm": standalone_gflops("weight", G, config.I, block, operands, threads),
    }
    torch.set_num_threads(threads)
    return {"inference": mean(inference), "training forward": mean(forward),
            "training backward": mean(backward), "alone": alone}


def rows_of(mode: str, wall: float, counts: dict, alone: dict, threads: int) -> list[tuple]:
    """(phase, ms, GF/s, GF/s alone) rows of one mode; in-loop phases in
    thread time divided by the threads (a loop too small to wake the other
    threads runs on one: its waiting then reads high)."""
    def ms(kind):
        return counts.get(kind, (0.0, 0, 0))[0]

    def gf(kind, time_ms):
        flops = counts.get(kind, (0, 0, 0))[2]
        return flops / (time_ms * 1e6) if time_ms > 0 and flops else None
    products = "input gradient" if "backward" in mode else "input projection"
    cell = "cell_backward" if "backward" in mode else "cell_forward"
    loop = ms("time_loop")
    inside = ms("step_gemm") + ms(cell)
    out = [
        ("layout", ms("layout"), None, None),
        (products, ms("sequence_gemm"), gf("sequence_gemm", ms("sequence_gemm")),
         alone["sequence_gemm"]),
        ("time loop (wall)", loop, None, None),
        ("  step products (thread ms / threads)", ms("step_gemm") / threads,
         gf("step_gemm", ms("step_gemm")), alone["step_gemm"]),
        ("  cell pass (thread ms / threads)", ms(cell) / threads, None, None),
        ("  waiting: barriers, imbalance", loop - inside / threads, None, None),
    ]
    if "backward" in mode:
        out.append(("weight gradients", ms("weight_gemm"), gf("weight_gemm", ms("weight_gemm")),
                    alone["weight_gemm"]))
    accounted = ms("layout") + ms("sequence_gemm") + loop + ms("weight_gemm")
    out.append(("rest of the kernels: allocation, bias, copies", ms("kernels") - accounted,
                None, None))
    out.append(("outside the kernels: Python, autograd (grad accumulation), dispatch", wall - ms("kernels"),
                None, None))
    out.append(("total", wall, None, None))
    return out


def summary(name: str, result: dict, theirs: dict, threads: int) -> list[str]:
    """One markdown row per mode: each side's total, and ours cut into its
    products (with their GF/s over all threads), cell passes, waiting in the
    loop, layout, the rest of the kernels, and Python (all outside them)."""
    rows = []
    for mode, parts in (("inference", ["inference"]),
                        ("training", ["training forward", "training backward"])):
        wall = products = flops = cells = waiting = layout = kernels = 0.0
        for part in parts:
            total, counts = result[part]
            ms = {k: v[0] for k, v in counts.items()}
            in_loop = (ms["step_gemm"] + ms["cell_forward"] + ms["cell_backward"]) / threads
            wall += total
            products += ms["sequence_gemm"] + ms["step_gemm"] / threads + ms["weight_gemm"]
            flops += sum(counts[k][2] for k in ("sequence_gemm", "step_gemm", "weight_gemm"))
            cells += (ms["cell_forward"] + ms["cell_backward"]) / threads
            waiting += ms["time_loop"] - in_loop
            layout += ms["layout"]
            kernels += ms["kernels"]
        rest = kernels - products - cells - waiting - layout
        their_wall, prims = theirs[mode]
        gflops = flops / products / 1e6
        rows.append(f"| {name} | {mode} | {wall:.1f} | {products:.1f} ({gflops:.0f}) "
                    f"| {cells:.1f} | {waiting:.1f} | {layout:.1f} | {rest:.1f} "
                    f"| {wall - kernels:.1f} "
                    f"| {their_wall:.1f} ({prims.get('RNN primitive', 0):.1f}) "
                    f"| {their_wall / wall:.2f}x |")
    return rows


SUMMARY = ("| config | mode | lstm_ext ms | products ms (GF/s) | cell passes | waiting | layout "
           "| rest of kernels | Python | nn.LSTM ms (its RNN primitive) | nn.LSTM / lstm_ext |\n"
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def onednn(config: configs.Config, dtype, threads: int) -> dict:
    """nn.LSTM's primitive times per call, from a child process."""
    env = dict(os.environ, ONEDNN_VERBOSE="profile_exec")
    spec = json.dumps([config.B, config.T, config.I, config.H, str(dtype).split(".")[1], threads])
    proc = subprocess.run([sys.executable, __file__, "--onednn-child", spec], env=env,
                          capture_output=True, text=True, check=True)
    walls = json.loads(proc.stdout.splitlines()[-1])
    per_mode = {mode: collections.Counter() for mode in walls}
    mode = None
    for line in proc.stdout.splitlines():
        if line.startswith("mode "):
            mode = line.split(" ", 1)[1]
        elif line.startswith("onednn_verbose") and ",exec,cpu," in line and mode in per_mode:
            fields = line.split(",")
            kind = "RNN primitive" if fields[5] == "rnn" else "weight reorders"
            per_mode[mode][kind] += float(fields[-1]) / CALLS
    return {mode: (walls[mode], dict(per_mode[mode])) for mode in walls}


def onednn_child(spec: str) -> None:
    B, T, I, H, dtype, threads = json.loads(spec)  # noqa: E741
    torch.set_num_threads(threads)
    config = configs.Config(B, T, I, H)
    dtype = getattr(torch, dtype)
    model = measure.models(config, dtype, "cpu")["nn.LSTM"]
    x, _, _ = measure.inputs(config, dtype, "cpu")
    dy = torch.randn(T, B, H).to(dtype)
    model.eval()

    def infer():
        with torch.no_grad():
            model(x)

    def train():
        model(x)[0].backward(dy)
    walls = {}
    for mode, fn in (("inference", infer), ("training", train)):
        fn()
        sys.stdout.flush()
        print(f"mode {mode}", flush=True)
        times = []
        for _ in range(CALLS):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        walls[mode] = statistics.mean(times)
        print("mode none", flush=True)
        model.train()
    print(json.dumps(walls), flush=True)


def plain_config(text: str) -> configs.Config:
    config = configs.Config.parse(text)
    if config != configs.Config(config.B, config.T, config.I, config.H):
        raise argparse.ArgumentTypeError(f"{text!r}: phases.py profiles one plain layer "
                                         "(B, T, I and H only)")
    return config


def fmt(v, digits=1):
    return "" if v is None else f"{v:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", type=plain_config, default=[],
                        help="B=..,T=..,I=..,H=.. (one plain layer; repeatable)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onednn-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.onednn_child:
        return onednn_child(args.onednn_child)
    dtype = DTYPES[args.dtype]
    print(f"{bench.cpu_name()}, {args.dtype}, {args.threads} threads, torch {torch.__version__}")
    lines = []
    for config in args.config or LARGE:
        result = ours(config, dtype, args.threads)
        theirs = onednn(config, dtype, args.threads)
        print(f"\n### {config.name}\n")
        print("| phase | ms | GF/s | GF/s alone |\n|---|---:|---:|---:|")
        for mode in ("inference", "training forward", "training backward"):
            wall, counts = result[mode]
            print(f"| **lstm_ext {mode}** | | | |")
            for name, ms, gf, alone in rows_of(mode, wall, counts, result["alone"], args.threads):
                print(f"| {name} | {fmt(ms)} | {fmt(gf, 0)} | {fmt(alone, 0)} |")
        for mode, (wall, prims) in theirs.items():
            print(f"| **nn.LSTM {mode}** | | | |")
            for name, ms in sorted(prims.items()):
                print(f"| {name} | {fmt(ms)} | | |")
            print(f"| rest: Python, ATen | {fmt(wall - sum(prims.values()))} | | |")
            print(f"| total | {fmt(wall)} | | |")
        lines += summary(config.name, result, theirs, args.threads)
    print(f"\n### Summary (ms per call)\n\n{SUMMARY}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
