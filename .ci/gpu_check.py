"""`make gpu-check`: build, test and measure lstm_ext on this machine's GPU,
unattended and offline.

For a machine lent for minutes: it uses the python3 it is run with and that
Python's own CUDA build of torch (2.6 or newer), installs and downloads
nothing, and writes everything into gpu-check/<UTC time>/:

  summary.md         each step, how long it took, and what it found
  environment.md     nvidia-smi, torch, CUDA, nvcc, the GPUs
  build.log, ptxas.md    the in-place CUDA build for the GPUs found; registers,
                     shared memory and spills per kernel
  tests-test_cuda.log    tests/test_cuda.py: the op and the module against the
                     CPU op and nn.LSTM on the GPU, gradcheck, CUDA graphs,
                     streams, determinism
  check.log          python -m lstm_ext.check: the paths this machine takes
                     (CPU and CUDA, every dtype), each against nn.LSTM
  bench-float32/, bench-bfloat16/   benchmarks/bench.py --device cuda: markdown,
                     JSON (rewritten after each configuration) and plot

Each step's output goes to its log as it comes, and every step's time limit is
cut to what is left of an 8-minute budget; the slow parts come last, so a run
cut short still leaves the test results. A test file whose imports are missing
here (other than lstm_ext's own) is reported as skipped, not failed. Without a
GPU it stops at once with a message and exit status 2. Exit status 1 when the
build, the self-check or a test failed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ["tests/test_cuda.py"]
BENCH_DTYPES = ["float32", "bfloat16"]
BUDGET = 480  # seconds for the whole check


def stop(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr)
    sys.exit(2)


def find_gpu():
    """torch and its GPUs, or a stop within seconds."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        stop("no nvidia-smi on PATH: this check needs a machine with an NVIDIA GPU")
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        stop(f"nvidia-smi -L failed: {e}")
    if listed.returncode != 0 or "GPU" not in listed.stdout:
        stop(f"nvidia-smi finds no GPU: {(listed.stderr or listed.stdout).strip()}")
    try:
        import torch
    except Exception as e:  # noqa: BLE001  (ImportError, or a CUDA library torch cannot load)
        stop(f"{sys.executable} cannot import torch ({e}): use the python3 that has the CUDA "
             "build of torch")
    if torch.version.cuda is None:
        stop(f"torch {torch.__version__} at {torch.__file__} is not a CUDA build")
    if not torch.cuda.is_available():
        stop(f"torch {torch.__version__} sees no GPU (driver too old for CUDA "
             f"{torch.version.cuda}? CUDA_VISIBLE_DEVICES?)")
    return torch


class Run:
    """The output folder, the summary, and the steps' commands."""

    def __init__(self, out: Path):
        self.out, self.start, self.failed = out, time.monotonic(), False
        self.summary = out / "summary.md"
        self.summary.write_text(f"# gpu-check {out.name}\n\n")

    def note(self, line: str) -> None:
        print(f"gpu-check [{time.monotonic() - self.start:5.0f}s] {line}", flush=True)
        with self.summary.open("a") as f:
            f.write(f"- {line}\n")

    def command(self, args: list[str], log: str, env: dict | None = None,
                timeout: float = 600) -> tuple[int, str]:
        """Runs `args` in the repository with the in-place build importable, its
        output going into `log` as it comes; (status, output). At the time limit
        (cut to the budget left) its whole process group is killed: status -1."""
        began = time.monotonic()
        timeout = max(1.0, min(timeout, BUDGET - (began - self.start)))
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with (self.out / log).open("w") as f:
            process = subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONPATH": path, **(env or {})},
                                       start_new_session=True)
            try:
                status = process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                status = -1
        output = (self.out / log).read_text(errors="replace")
        if status == -1:
            output += f"\ntimed out after {timeout:.0f}s (the budget left)\n"
            (self.out / log).write_text(output)
        self.elapsed = time.monotonic() - began
        return status, output


def environment(run: Run, torch) -> list[str]:
    """environment.md; returns the GPUs' architectures (sm_XY)."""
    archs = sorted({"sm_%d%d" % torch.cuda.get_device_capability(i)
                    for i in range(torch.cuda.device_count())})
    lines = [f"python {sys.version.split()[0]} ({sys.executable})",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}"]
    lines += [f"GPU {i}: {torch.cuda.get_device_name(i)}, {archs}"
              for i in range(torch.cuda.device_count())]
    for args in (["nvidia-smi"], ["nvcc", "--version"]):
        try:
            text = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            text = str(e)
        lines.append(f"\n$ {' '.join(args)}\n```\n{text}```")
    (run.out / "environment.md").write_text("\n".join(lines) + "\n")
    return archs


def build(run: Run, torch, archs: list[str]) -> bool:
    """Afresh (--force, and no extension of another build left to import), for the
    GPUs present only, whatever TORCH_CUDA_ARCH_LIST the machine sets."""
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        run.note("no ninja: the build compiles one file at a time")
    for stale in (*ROOT.glob("lstm_ext/_C*.so"), *ROOT.glob("lstm_ext/_emu*.so")):
        stale.unlink()
    arch_list = ";".join(sorted({"%d.%d" % torch.cuda.get_device_capability(i)
                                 for i in range(torch.cuda.device_count())}))
    env = {"LSTM_EXT_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch_list,
           "MAX_JOBS": str(len(os.sched_getaffinity(0)))}
    status, _ = run.command([sys.executable, "setup.py", "build_ext", "--inplace", "--force"],
                            "build.log", env=env, timeout=300)
    if status != 0:
        run.note(f"build FAILED ({run.elapsed:.0f}s): see build.log")
        return False
    run.note(f"built in place for {', '.join(archs)} ({run.elapsed:.0f}s)")
    status, output = run.command([sys.executable, ".ci/ptxas_report.py",
                                  str(run.out / "build.log"), str(run.out / "ptxas.md"),
                                  *archs], "ptxas-report.log", timeout=60)
    verdict = "no spills" if status == 0 else f"FAILED: {output.strip().splitlines()[-1]}"
    run.note(f"ptxas report: {verdict} (ptxas.md)")
    return True


def self_check(run: Run) -> bool:
    """`python -m lstm_ext.check`, which says what this machine runs and runs it."""
    status, output = run.command([sys.executable, "-m", "lstm_ext.check"], "check.log",
                                 timeout=240)
    lines = output.strip().splitlines()
    found = [line for line in lines if re.match(r"(bfloat16|float16|CUDA \d+): ", line)]
    verdict = lines[-1] if status == 0 and lines else "FAILED: see check.log"
    run.note(f"lstm_ext.check: {verdict} ({run.elapsed:.0f}s); {'; '.join(found)}")
    return status == 0


def tests(run: Run) -> bool:
    try:
        import pytest  # noqa: F401
    except ImportError:
        run.note("tests skipped: no pytest in this Python")
        return True
    ok = True
    for path in TEST_FILES:
        name = Path(path).stem
        status, output = run.command(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", path],
            f"tests-{name}.log", timeout=240)
        last = output.strip().splitlines()[-1] if output.strip() else ""
        missing = re.search(r"No module named '([^'.]+)", output)
        if status == 2 and missing and missing[1] != "lstm_ext":
            run.note(f"{name}: skipped, this Python has no {missing[1]}")
        elif status in (0, 5):
            run.note(f"{name}: {last} ({run.elapsed:.0f}s)")
        else:
            ok = False
            run.note(f"{name}: FAILED, {last} ({run.elapsed:.0f}s): see tests-{name}.log")
    return ok


def benchmarks(run: Run) -> None:
    for dtype in BENCH_DTYPES:
        folder = run.out / f"bench-{dtype}"
        status, output = run.command(
            [sys.executable, "benchmarks/bench.py", "--device", "cuda", "--dtype", dtype,
             "--min-run-time", "0.05", "--out", str(folder)], f"bench-{dtype}.log", timeout=300)
        if status == 0:
            summary = [line for line in output.splitlines() if "median speedup" in line]
            run.note(f"benchmark {dtype} ({run.elapsed:.0f}s): {'; '.join(summary)}")
        else:
            run.note(f"benchmark {dtype} FAILED or cut short ({run.elapsed:.0f}s): see "
                     f"bench-{dtype}.log and what bench-{dtype}/ holds")


def main() -> None:
    torch = find_gpu()
    out = ROOT / "gpu-check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out.mkdir(parents=True)
    run = Run(out)
    run.note(f"writing to {out}")
    archs = environment(run, torch)
    run.note(f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}")
    if not build(run, torch, archs):
        sys.exit(1)
    passed = tests(run)
    passed = self_check(run) and passed
    benchmarks(run)
    run.note(f"done: {'tests passed' if passed else 'TESTS FAILED'}; everything is in {out}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
