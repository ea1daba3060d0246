"""The CPU kernels of every instruction-set level this CPU has (csrc/cpu/kernels.h):
each, forced with ATEN_CPU_CAPABILITY in a fresh process, is the level chosen
and matches nn.LSTM (outputs, final states, every gradient, tangents), float32
and float64; where bfloat16 runs natively, its cell passes (the polynomial
exp of cell.h's RoundedActivations) stay within bfloat16's rounding of
float64, forward and backward, and carry NaN and infinities forward as
float64 does."""

import os
import pathlib
import subprocess
import sys

import pytest

import lstm_ext

LEVELS = ["default", "avx2", "avx512"]
TESTS = pathlib.Path(__file__).resolve().parent

CHECK = """
import copy
import sys
import torch
import lstm_ext
from reference import Case, Problem, assert_same

level = lstm_ext.cpu_kernels()
assert level == sys.argv[1], f"chose {level}, not {sys.argv[1]}"
for dtype in (torch.float32, torch.float64):
    for case in (Case(T=6, B=5, I=7, H=19, dtype=dtype),
                 Case(T=7, B=5, I=3, H=33, packed=True, reverse=True, proj=5, dtype=dtype)):
        problem = Problem(case)
        assert_same(problem, problem.run_ours(), problem.run_torch())
        primals = [leaf.detach() for leaf in problem.leaves()]
        tangents = [torch.randn_like(p) for p in primals]
        _, ours = torch.func.jvp(problem.ours_fn(), tuple(primals), tuple(tangents))
        theirs = torch.autograd.functional.jvp(problem.torch_fn(), tuple(primals),
                                               tuple(tangents))[1]
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, **tol)
if torch.ops.lstm_ext.cpu_native(torch.bfloat16):
    torch.manual_seed(0)
    model = lstm_ext.LSTM(7, 40, num_layers=2).double()
    x = 3 * torch.randn(9, 5, 7, dtype=torch.float64)
    x[2, 1, 3], x[4, 3, 0], x[5, 0, 1] = float("nan"), float("inf"), -float("inf")
    x[6, 2] = 1e30  # past exp's range in every gate
    exact = model(x)
    rounded = copy.deepcopy(model).bfloat16()(x.bfloat16())
    for a, b in zip(torch.utils._pytree.tree_leaves(rounded),
                    torch.utils._pytree.tree_leaves(exact)):
        torch.testing.assert_close(a.double(), b, rtol=0.05, atol=0.05, equal_nan=True)
    # The backward's cell pass (tanh of c) on finite inputs, saturated rows included.
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).requires_grad_()
    x16 = x.detach().bfloat16().requires_grad_()
    model16 = copy.deepcopy(model).bfloat16()
    dy = torch.randn(9, 5, 40, dtype=torch.float64)
    model(x)[0].backward(dy)
    model16(x16)[0].backward(dy.bfloat16())
    torch.testing.assert_close(x16.grad.double(), x.grad, rtol=0.05, atol=0.05)
    for p16, p in zip(model16.parameters(), model.parameters()):
        torch.testing.assert_close(p16.grad.double(), p.grad, rtol=0.05, atol=0.05)
print("ok", level)
"""


@pytest.mark.parametrize("level", LEVELS)
def test_level_is_chosen_and_matches_nn_lstm(level):
    best = lstm_ext.cpu_kernels()
    if LEVELS.index(level) > LEVELS.index(best):
        pytest.skip(f"this CPU (or ATEN_CPU_CAPABILITY) stops at {best}")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=level)
    result = subprocess.run([sys.executable, "-c", CHECK, level], cwd=TESTS, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["ok", level]
