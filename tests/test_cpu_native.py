"""bfloat16/float16 on the CPU: the choice of the native path (16-bit products,
fp32 accumulation, cell and state) by the CPU, and both paths' accuracy
against float64 next to nn.LSTM's own bfloat16 run."""

import copy
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

import lstm_ext
from cpu_native import PATHS, reduced_path
from lstm_ext import check
from lstm_ext.check import onednn_isa
from cpu_split import SEQUENCES, UNITS, cpu_split
from module_reference import ModuleCase, ModuleProblem, twins


def environment(**settings):
    """This process's environment with `settings` (None: removed)."""
    env = {k: v for k, v in os.environ.items() if k not in settings}
    env.update({k: v for k, v in settings.items() if v is not None})
    return env


def run_python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


CHOICE = """
import json, torch, lstm_ext
choice = [list(torch.ops.lstm_ext.cpu_native_choice(d)) for d in (torch.bfloat16, torch.float16)]
lstm = lstm_ext.LSTM(15, 20).bfloat16()
x = torch.randn(5, 3, 15).bfloat16().requires_grad_()
lstm(x)[0].float().sum().backward()
print(json.dumps([lstm_ext.cpu_kernels(), *choice]))
"""


@pytest.mark.parametrize("ceiling", [None, "AVX512_CORE_BF16", "avx512_core", "AVX2"])
def test_the_choice_follows_onednn(ceiling):
    """bfloat16 runs natively exactly where oneDNN reports bfloat16 dot products
    (its ISA line, ONEDNN_VERBOSE) and our kernels run at the AVX512 level, on AMX
    exactly where oneDNN reports AMX; ONEDNN_MAX_CPU_ISA (in any case, as oneDNN
    reads it) lowers ours with oneDNN's, and a layer then runs upcast instead of
    failing in oneDNN. float16 is native nowhere by default."""
    env = environment(ONEDNN_MAX_CPU_ISA=ceiling, LSTM_EXT_CPU_NATIVE=None)
    kernels, (bf16, amx, why), (f16, _, f16_why) = json.loads(run_python(CHOICE, env))
    isa = onednn_isa(env)
    assert bf16 == (kernels == "avx512" and "bfloat16" in isa), (isa, why)
    assert amx == (bf16 and "AMX" in isa), (isa, why)
    if not bf16 and ceiling and kernels == "avx512" and "bfloat16" not in isa:
        assert "ONEDNN_MAX_CPU_ISA" in why or "no bfloat16" in why, why
    assert not f16, f16_why


def test_float16_is_opt_in():
    """LSTM_EXT_CPU_NATIVE=bfloat16,float16 turns float16's native path on where
    oneDNN takes float16 in pairs (AMX-FP16) and leaves bfloat16's as it was."""
    default = json.loads(run_python(CHOICE, environment(LSTM_EXT_CPU_NATIVE=None)))
    both = json.loads(run_python(CHOICE, environment(LSTM_EXT_CPU_NATIVE="bfloat16,float16")))
    assert both[1] == default[1]
    on, amx, why = both[2]
    assert on == ("AMX" in onednn_isa(environment()) and amx), why
    if not on:
        assert why == default[2][2], (why, default[2][2])


@pytest.mark.parametrize("value", ["0", "float16", "bf16"])
def test_the_environment_chooses(value):
    code = ("import torch, lstm_ext; ops = torch.ops.lstm_ext; "
            "print(ops.cpu_native(torch.bfloat16), ops.cpu_native(torch.float16))")
    env = environment(LSTM_EXT_CPU_NATIVE=value)
    if value == "bf16":
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True)
        assert done.returncode != 0 and "ValueError" in done.stderr
        assert "LSTM_EXT_CPU_NATIVE: expected 0, 1, or a comma-separated list" in done.stderr
        return
    assert run_python(code, env).split()[0] == "False"


def test_lower_kernels_turn_it_off():
    code = ("import json, torch, lstm_ext; "
            "print(json.dumps(torch.ops.lstm_ext.cpu_native_choice(torch.bfloat16)))")
    on, amx, why = json.loads(run_python(code, environment(ATEN_CPU_CAPABILITY="avx2")))
    assert not on and not amx and why.startswith("the CPU kernels run at the avx2 level"), why


def test_without_onednn_the_upcast_path_runs():
    lstm = lstm_ext.LSTM(8, 16).bfloat16()
    x = torch.randn(5, 3, 8).bfloat16()
    with reduced_path("upcast"):
        expected = lstm(x)[0]
    with torch.backends.mkldnn.flags(enabled=False):
        assert not torch.ops.lstm_ext.cpu_native(torch.bfloat16)
        assert torch.equal(lstm(x)[0], expected)


def reference_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """The native path's arithmetic in Python: products of 16-bit values in float32,
    the cell in float32, h rounded to the 16-bit type once per step."""
    f = [t.float() for t in (w_ih, w_hh, b_ih, b_hh)]
    h, c, ys = h0, c0.float(), []
    for x_t in x:
        gates = x_t.float() @ f[0].T + h.float() @ f[1].T + f[2] + f[3]
        i, fo, g, o = gates.chunk(4, 1)
        c = fo.sigmoid() * c + i.sigmoid() * g.tanh()
        h = (o.sigmoid() * c.tanh()).to(x.dtype)
        ys.append(h)
    return torch.stack(ys)


def test_native_rounds_h_once_per_step():
    """The native path matches its arithmetic (h rounded where it feeds the next
    product, as oneDNN does) to float32's accuracy, closer than the upcast path."""
    gen = torch.Generator().manual_seed(0)
    T, B, I, H = 60, 5, 24, 40  # noqa: E741
    args = [torch.randn(*s, generator=gen).bfloat16() for s in
            [(T, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]]
    expected = reference_layer(*args).double()
    errors = {}
    for path in PATHS:
        with reduced_path(path):
            y, _ = lstm_ext.lstm_layer(args[0], tuple(args[1:3]), *args[3:], batch_sizes=None)
        errors[path] = (y.double() - expected).abs().max().item()
    assert errors["native"] <= 8e-3 and errors["native"] < errors["upcast"], errors


# The accuracy grid: T up to 500; layers, bidirectional, proj_size, packed.
ACCURACY = [
    ModuleCase(layers=layers, bidirectional=bidirectional, proj=proj, input=input,
               dtype=torch.bfloat16, T=T, B=B, I=32, H=64)
    for (layers, bidirectional, proj, input), (T, B) in itertools.product(
        [(1, False, 0, "padded"), (2, True, 0, "padded"), (1, False, 16, "padded"),
         (2, False, 0, "packed"), (1, True, 16, "packed")],
        [(50, 16), (500, 4)])
]
# lstm_ext.check's odd shapes, in both 16-bit dtypes: odd row counts (T*B,
# packed) and input sizes, I=1 (depth 1), one sequence, odd H and proj_size:
# every product's depth odd somewhere, which AMX cannot take as such.
ODD = [
    ModuleCase(T=c.T, B=c.B, I=c.I, H=c.H, layers=c.layers, bidirectional=c.bidirectional,
               proj=c.proj, input="packed" if c.lengths else "padded", dtype=dtype)
    for c in check.CASES for dtype in (torch.bfloat16, torch.float16)
]


def results(run):
    """A run's outputs, final states and gradients by name."""
    named = {name: getattr(run, name) for name in ("y", "h_n", "c_n")}
    return {**named, **{f"grad {name}": g for name, g in run.grads.items()}}


def relative_errors(run, exact):
    return check.relative_errors(results(run), results(exact))


def mean_errors(case, path, seeds):
    """Our and nn.LSTM's relative errors in the case's dtype against float64 (same
    rounded weights and inputs), each averaged over the inputs of `seeds` seeds."""
    ref, ours = twins(case)
    mine, theirs = {}, {}
    for seed in range(seeds):
        problem = ModuleProblem(case, seed)
        exact = problem.run(copy.deepcopy(ref).double(), torch.float64)
        with reduced_path(path, case.dtype):
            result = problem.run(ours)
        for total, errors in ((mine, relative_errors(result, exact)),
                              (theirs, relative_errors(problem.run(ref), exact))):
            for name, e in errors.items():
                total[name] = total.get(name, 0.0) + e / seeds
    return mine, theirs


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ACCURACY + ODD,
                         ids=lambda c: f"{c}-T{c.T}B{c.B}I{c.I}H{c.H}")
def test_accuracy_against_float64(case, path):
    """Our bfloat16/float16 errors against float64 are at most 1.5x nn.LSTM's own
    errors in that dtype, or one rounding of the largest value (2^-8 of it in
    bfloat16, 2^-11 in float16) where nn.LSTM's error is smaller than that.
    Small shapes' errors are a few roundings each: they are averaged over the
    inputs of 8 seeds."""
    mine, theirs = mean_errors(case, path, seeds=8 if case in ODD else 1)
    rounding = 2**-8 if case.dtype == torch.bfloat16 else 2**-11
    worse = {name: f"{mine[name]:.2e} vs nn.LSTM {theirs[name]:.2e}" for name in mine
             if mine[name] > max(1.5 * theirs[name], rounding)}
    assert not worse, worse


@pytest.mark.parametrize("path", PATHS)
def test_other_16_bit_work_between_forward_and_backward(path):
    """torch's own bfloat16 matmuls and nn.LSTM's oneDNN layer (which set up and
    release AMX tiles themselves, where the CPU has them) run between our forward
    and backward change none of our numbers."""
    torch.manual_seed(0)
    lstm = lstm_ext.LSTM(15, 40, num_layers=2, proj_size=7).bfloat16()
    other = torch.nn.LSTM(15, 40).bfloat16()
    x = torch.randn(9, 3, 15).bfloat16()

    def theirs():
        a = torch.randn(33, 65).bfloat16()
        (a @ a.T).sum()
        torch.nn.functional.linear(a, torch.randn(17, 65).bfloat16()).sum()
        leaf = x.clone().requires_grad_()
        other(leaf)[0].float().sum().backward()

    def ours(between):
        leaf = x.clone().requires_grad_()
        y, (h_n, c_n) = lstm(leaf)
        between()
        loss = y.float().square().sum() + c_n.float().sum()
        return y, h_n, c_n, *torch.autograd.grad(loss, [leaf, *lstm.parameters()])

    with reduced_path(path):
        clean = ours(lambda: None)
        mixed = ours(theirs)
    for a, b in zip(clean, mixed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_inference_equals_the_training_forward(path):
    lstm = lstm_ext.LSTM(24, 80, num_layers=2, bidirectional=True, proj_size=20).bfloat16()
    x = torch.randn(40, 6, 24).bfloat16()
    with reduced_path(path):
        trained = lstm(x)
        with torch.no_grad():
            inferred = lstm(x)
    for a, b in zip((trained[0], *trained[1]), (inferred[0], *inferred[1])):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_both_thread_splits_agree(path):
    """Split by sequences or by hidden units, a step computes the same numbers."""
    lstm = lstm_ext.LSTM(16, 130, proj_size=40).bfloat16()
    x = torch.randn(12, 3, 16).bfloat16().requires_grad_()
    results = []
    with reduced_path(path):
        for split in (SEQUENCES, UNITS):
            with cpu_split(split):
                y, (h_n, c_n) = lstm(x)
                grads = torch.autograd.grad(y.float().square().sum() + c_n.float().sum(),
                                            [x, *lstm.parameters()])
                results.append((y, h_n, c_n, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("input", ["padded", "packed"])
def test_autocast_takes_the_native_path(input):
    """Under CPU autocast to bfloat16, padded input runs the layer on bfloat16
    values, so natively where the CPU can; packed input keeps nn.LSTM's rule
    (float32)."""
    lstm = lstm_ext.LSTM(16, 32, num_layers=2)
    x = torch.randn(10, 4, 16)
    if input == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [10, 8, 5, 2])
    for path in PATHS:
        with reduced_path(path):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = lstm(x)[0]
            cast = copy.deepcopy(lstm).bfloat16()
            if input == "packed":
                assert out.data.dtype == torch.float32
                assert torch.equal(out.data, lstm(x)[0].data)
            else:
                assert out.dtype == torch.bfloat16
                assert torch.equal(out, cast(x.bfloat16())[0])
