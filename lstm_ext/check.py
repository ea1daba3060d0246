"""`python -m lstm_ext.check`: which paths this machine takes, and whether each
one computes what nn.LSTM computes here.

It prints the CPU kernels' level, oneDNN's instruction set, whether bfloat16
and float16 run natively (and why, and whether on AMX), and the CUDA device if
any. Then it runs every path this machine has (float32; bfloat16 and float16,
natively where chosen and upcast; the same on CUDA) forward, backward and
forward-mode (tangents) on small odd shapes: an odd number of rows and of
input features, one input feature, one sequence, packed sequences, two
bidirectional layers with an odd projection. Each result is compared with
nn.LSTM in float64 on the same rounded values, and must be as close as
nn.LSTM's own run in that dtype (within 2x) or within a few roundings of the
dtype. The choice and each path run in a process of their own, so that a
crash is reported as a failure. The exit status is 1 when anything fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import signal
import subprocess
import sys

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext

# A few roundings of each dtype, relative (bfloat16 and float16: a unit in the
# last place at 1, two roundings): the least error a check must allow.
ROUNDING = {torch.float32: 2.0**-16, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TIMEOUT = 600  # seconds per path


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    I: int  # noqa: E741
    H: int
    T: int
    B: int
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    lengths: tuple[int, ...] | None = None  # packed (unsorted) when given


CASES = [
    Case("15 rows, I=15", I=15, H=32, T=5, B=3),
    Case("I=1", I=1, H=8, T=9, B=2),
    Case("B=1, H=9", I=5, H=9, T=7, B=1),
    Case("packed, 13 rows", I=3, H=16, T=7, B=3, lengths=(5, 7, 1)),
    Case("2 layers, bidirectional, proj_size=5", I=7, H=13, T=6, B=3, layers=2,
         bidirectional=True, proj=5),
]


@dataclasses.dataclass(frozen=True)
class Path:
    dtype: str
    device: str
    native: bool  # CPU 16-bit: the native path (else upcast)

    @property
    def name(self) -> str:
        kind = ""
        if self.device == "cpu" and self.dtype != "float32":
            kind = ", native" if self.native else ", upcast"
        return f"{self.dtype} ({self.device}{kind})"


def onednn_isa(env: dict | None = None) -> str:
    """oneDNN's instruction set as it reports it (ONEDNN_VERBOSE), from a
    process of its own with this environment (default: ours)."""
    code = "import torch; torch.nn.LSTM(2, 2)(torch.randn(1, 1, 2))"
    env = {**(os.environ if env is None else env), "ONEDNN_VERBOSE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120).stdout
    except subprocess.TimeoutExpired:
        return "unknown (timed out)"
    found = re.search(r"cpu,isa:(.*)", out)
    return found[1].strip() if found else "not reported (oneDNN unused or turned off)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_kernels() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("lstm_ext::lstm_layer", "CUDA")


def choices() -> dict:
    """The native path's choice for each 16-bit dtype: {"bfloat16": [native,
    amx, why], ...}, made in this process (it runs a probe product)."""
    out = {}
    for name in ("bfloat16", "float16"):
        if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
            out[name] = [False, False, "oneDNN is turned off"]
        else:
            out[name] = list(torch.ops.lstm_ext.cpu_native_choice(DTYPES[name]))
    return out


def run_child(args: list[str], env: dict | None = None) -> tuple[dict | None, list[str]]:
    """`python -m lstm_ext.check <args>` in a process of its own, which prints
    a JSON line last: (that object, []), or (None, what went wrong) if it
    crashed, timed out or printed none."""
    command = [sys.executable, "-m", "lstm_ext.check", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                              env=env)
    except subprocess.TimeoutExpired:
        return None, [f"timed out after {TIMEOUT} s"]
    tail = done.stderr.strip().splitlines()[-5:]
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return None, [f"crashed: {name}", *tail]
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), []
    except (IndexError, json.JSONDecodeError):
        return None, [f"exit status {done.returncode}", *tail]


def describe(chosen: dict) -> list[str]:
    lines = [f"lstm_ext {lstm_ext.__version__}, torch {torch.__version__}, "
             f"Python {platform.python_version()}",
             f"CPU: {cpu_name()}; CPU kernels: {lstm_ext.cpu_kernels()}",
             f"oneDNN: {onednn_isa()}"]
    for name in ("ONEDNN_MAX_CPU_ISA", "LSTM_EXT_CPU_NATIVE", "ATEN_CPU_CAPABILITY"):
        if os.environ.get(name):
            lines.append(f"  {name}={os.environ[name]}")
    for name, (on, amx, why) in chosen.items():
        tiles = ", on AMX" if on and amx else ""
        lines.append(f"{name}: {'native' if on else 'upcast'}{tiles} ({why})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            lines.append(f"CUDA {i}: {torch.cuda.get_device_name(i)}, sm_{major}{minor}; "
                         f"lstm_ext CUDA kernels: {'yes' if cuda_kernels() else 'no'}")
    else:
        lines.append(f"CUDA: no device (torch built with CUDA {torch.version.cuda})")
    return lines


def paths(chosen: dict) -> list[Path]:
    found = [Path("float32", "cpu", False)]
    for name, (on, _, _) in chosen.items():
        if on:
            found.append(Path(name, "cpu", True))
        found.append(Path(name, "cpu", False))
    if torch.cuda.is_available() and cuda_kernels():
        found += [Path(name, "cuda", False) for name in DTYPES]
    return found


# In the process of one path.

def modules(case: Case, dtype: torch.dtype, device: str):
    """nn.LSTM in float64 and in dtype, and lstm_ext.LSTM in dtype, with the
    same parameters (values of dtype)."""
    torch.manual_seed(0)
    kwargs = dict(num_layers=case.layers, bidirectional=case.bidirectional, proj_size=case.proj)
    exact = nn.LSTM(case.I, case.H, **kwargs, dtype=torch.float64)
    with torch.no_grad():
        for p in exact.parameters():
            p.copy_(p.to(dtype))
    theirs = nn.LSTM(case.I, case.H, **kwargs).to(device, dtype)
    ours = lstm_ext.LSTM(case.I, case.H, **kwargs).to(device, dtype)
    theirs.load_state_dict(exact.state_dict())
    ours.load_state_dict(exact.state_dict())
    return exact.to(device), theirs, ours


def inputs(case: Case, dtype: torch.dtype, device: str):
    """Input, states, output gradients and tangents: float64 values of dtype."""
    gen = torch.Generator().manual_seed(1)
    D, P = 1 + case.bidirectional, case.proj or case.H

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).double().to(device)

    rows = sum(case.lengths) if case.lengths else case.T * case.B
    x_shape = (rows, case.I) if case.lengths else (case.T, case.B, case.I)
    y_shape = (rows, D * P) if case.lengths else (case.T, case.B, D * P)
    state, cell = (case.layers * D, case.B, P), (case.layers * D, case.B, case.H)
    primal = dict(x=randn(*x_shape), h0=randn(*state), c0=randn(*cell))
    grads = dict(y=randn(*y_shape), h_n=randn(*state), c_n=randn(*cell))
    tangents = dict(x=randn(*x_shape), h0=randn(*state), c0=randn(*cell))
    return primal, grads, tangents


def outputs(module: nn.Module, case: Case, x, h0, c0, params=None):
    if case.lengths:
        # x is the packed data: packing has no forward-mode derivative.
        order = pack_padded_sequence(torch.zeros(case.T, case.B), torch.tensor(case.lengths),
                                     enforce_sorted=False)
        x = PackedSequence(x, order.batch_sizes, order.sorted_indices.to(x.device),
                           order.unsorted_indices.to(x.device))
    args = (x, (h0, c0))
    if params is None:
        out, (h_n, c_n) = module(*args)
    else:
        out, (h_n, c_n) = torch.func.functional_call(module, params, args)
    y = out.data if isinstance(out, PackedSequence) else out
    return {"y": y, "h_n": h_n, "c_n": c_n}


def backward(module: nn.Module, case: Case, dtype: torch.dtype, primal, grads) -> dict:
    """Outputs, final states and the gradients of x, h0, c0 and every parameter."""
    leaves = {k: v.to(dtype).requires_grad_() for k, v in primal.items()}
    out = outputs(module, case, leaves["x"], leaves["h0"], leaves["c0"])
    loss = sum((out[k] * grads[k].to(dtype)).sum() for k in out)
    wrt = {**leaves, **dict(module.named_parameters())}
    got = torch.autograd.grad(loss, list(wrt.values()))
    return {**{k: v.detach() for k, v in out.items()},
            **{f"grad {k}": g for k, g in zip(wrt, got)}}


def tangents_of(module: nn.Module, case: Case, dtype: torch.dtype, primal, tangents,
                exact: bool = False) -> dict:
    """The tangents of y, h_n and c_n for tangents of x, h0, c0 and every
    parameter (the parameters' drawn from a seeded generator): forward-mode
    AD (torch.func.jvp), or for the exact reference the double-backward trick
    (torch.autograd.functional.jvp), which nn.LSTM supports on packed input."""
    names = [k for k, _ in module.named_parameters()]
    params = [p.detach() for _, p in module.named_parameters()]
    gen = torch.Generator().manual_seed(2)
    t_params = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
                .to(p.device, p.dtype) for p in params]

    def f(x, h0, c0, *values):
        out = outputs(module, case, x, h0, c0, dict(zip(names, values)))
        return out["y"], out["h_n"], out["c_n"]

    args = (*(primal[k].to(dtype) for k in ("x", "h0", "c0")), *params)
    t_args = (*(tangents[k].to(dtype) for k in ("x", "h0", "c0")), *t_params)
    if exact:
        _, out = torch.autograd.functional.jvp(f, args, t_args)
    else:
        _, out = torch.func.jvp(f, args, t_args)
    return {f"tangent {k}": t for k, t in zip(("y", "h_n", "c_n"), out)}


def relative_errors(got: dict, exact: dict) -> dict:
    """Per name, the largest |error| of got[name] against exact[name], relative
    to the largest |value| of exact[name]."""
    return {k: ((g.double() - exact[k]).abs().max() / exact[k].abs().max().clamp_min(1e-30))
            .item() for k, g in got.items()}


def check_path(path: Path) -> dict:
    dtype, device = DTYPES[path.dtype], path.device
    if device == "cpu" and dtype != torch.float32:
        taken = lstm_ext.cpu_native(dtype)
        if taken != path.native:
            return {"ok": False, "lines": [f"expected the {'native' if path.native else 'upcast'}"
                                           f" path, but cpu_native({path.dtype}) is {taken}"]}
    lines, ok, worst = [], True, 0.0
    for case in CASES:
        exact_m, theirs_m, ours_m = modules(case, dtype, device)
        primal, grads, tangents = inputs(case, dtype, device)
        for kind in ("forward and backward", "tangents"):
            def run(module, dtype, exact=False):
                if kind == "tangents":
                    return tangents_of(module, case, dtype, primal, tangents, exact)
                return backward(module, case, dtype, primal, grads)

            exact = run(exact_m, torch.float64, exact=True)
            mine = relative_errors(run(ours_m, dtype), exact)
            # nn.LSTM's tangents as the reference's: oneDNN's layer has no
            # derivative of its backward.
            with torch.backends.mkldnn.flags(enabled=kind != "tangents"):
                theirs = relative_errors(run(theirs_m, dtype, exact=True), exact)
            for name, err in mine.items():
                bound = max(2 * theirs[name], ROUNDING[dtype])
                worst = max(worst, err / bound)
                if not err <= bound:  # NaN fails too
                    ok = False
                    lines.append(f"{case.name}, {kind}: {name} relative error {err:.2e}, "
                                 f"nn.LSTM's {theirs[name]:.2e}, bound {bound:.2e}")
    lines.append(f"worst error / bound: {worst:.2f}")
    return {"ok": ok, "lines": lines}


def run_path(path: Path) -> tuple[bool, list[str]]:
    """Runs one path in a process of its own: (passed, what to print)."""
    env = dict(os.environ)
    if path.device == "cpu" and path.dtype != "float32" and not path.native:
        env["LSTM_EXT_CPU_NATIVE"] = "0"
    result, trouble = run_child(["--path", json.dumps(dataclasses.asdict(path))], env)
    return (False, trouble) if result is None else (result["ok"], result["lines"])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--choices"]:
        print(json.dumps(choices()))
        return 0
    if argv[:1] == ["--path"]:
        path = Path(**json.loads(argv[1]))
        try:
            result = check_path(path)
        except Exception as e:  # reported as this path's failure
            result = {"ok": False, "lines": [f"{type(e).__name__}: {e}"]}
        print(json.dumps(result))
        return 0
    # The choice runs a probe product: in a process of its own too.
    chosen, trouble = run_child(["--choices"])
    if chosen is None:
        print("the native path's choice FAILED:", *trouble, sep="\n    ")
        return 1
    for line in describe(chosen):
        print(line)
    print()
    failed = []
    for path in paths(chosen):
        ok, lines = run_path(path)
        print(f"{path.name}: {'ok' if ok else 'FAILED'}")
        for line in lines:
            print(f"    {line}")
        if not ok:
            failed.append(path.name)
    print()
    print(f"failed: {', '.join(failed)}" if failed else "every path passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
