"""bfloat16/float16 on the CPU: the choice of the native path (16-bit products,
fp32 accumulation, cell and state) by the CPU, and both paths' accuracy
against float64 next to nn.LSTM's own bfloat16 run."""

import copy
import itertools
import os
import subprocess
import sys

import pytest
import torch

import lstm_ext
from cpu_native import PATHS, reduced_path
from cpu_split import SEQUENCES, UNITS, cpu_split
from module_reference import ModuleCase, ModuleProblem, twins


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo")
def test_the_cpu_chooses():
    """Native where the CPU has the dot products (and the kernels run at the AVX512
    level, which ATEN_CPU_CAPABILITY may lower); upcast elsewhere."""
    flags = cpu_flags()
    avx512 = torch.ops.lstm_ext.cpu_kernels() == "avx512"
    assert torch.ops.lstm_ext.cpu_native(torch.bfloat16) == (
        avx512 and bool(flags & {"avx512_bf16", "amx_bf16"}))
    assert torch.ops.lstm_ext.cpu_native(torch.float16) == (
        avx512 and bool(flags & {"avx512_fp16", "amx_fp16"}))
    assert not torch.ops.lstm_ext.cpu_native(torch.float32)
    assert lstm_ext.cpu_native(torch.bfloat16) == torch.ops.lstm_ext.cpu_native(torch.bfloat16)


@pytest.mark.parametrize("setting", ["LSTM_EXT_CPU_NATIVE=0", "ATEN_CPU_CAPABILITY=avx2"])
def test_the_environment_turns_it_off(setting):
    name, value = setting.split("=")
    code = ("import torch, lstm_ext; ops = torch.ops.lstm_ext; "
            "print(ops.cpu_native(torch.bfloat16), ops.cpu_native(torch.float16))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, name: value},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


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


def errors_against(run, exact):
    """Largest |error| of each output, final state and gradient."""
    out = {name: (getattr(run, name).double() - getattr(exact, name)).abs().max().item()
           for name in ("y", "h_n", "c_n")}
    out.update({f"grad {name}": (g.double() - exact.grads[name]).abs().max().item()
                for name, g in run.grads.items()})
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ACCURACY, ids=lambda c: f"{c}-T{c.T}")
def test_accuracy_against_float64(case, path):
    """Our bfloat16 errors against float64 (same rounded weights and inputs) are at
    most 1.5x nn.LSTM's own bfloat16 errors, or one bfloat16 rounding of the
    largest value (2^-8 of it) where nn.LSTM's error is smaller than that."""
    ref, ours = twins(case)
    problem = ModuleProblem(case)
    exact = problem.run(copy.deepcopy(ref).double(), torch.float64)
    theirs = errors_against(problem.run(ref), exact)
    with reduced_path(path):
        result = problem.run(ours)
    mine = errors_against(result, exact)
    scale = {name: getattr(exact, name).abs().max().item() for name in ("y", "h_n", "c_n")}
    scale.update({f"grad {n}": g.abs().max().item() for n, g in exact.grads.items()})
    worse = {name: f"{mine[name]:.2e} vs nn.LSTM {theirs[name]:.2e}" for name in mine
             if mine[name] > max(1.5 * theirs[name], scale[name] * 2**-8)}
    assert not worse, worse


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
