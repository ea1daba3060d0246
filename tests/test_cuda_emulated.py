"""The CUDA kernels and executor, run on the CPU by the emulated build
(csrc/emu), against the CPU op and torch.nn.LSTM: outputs, final states and
every gradient; and gradcheck through them. Emulation runs every CUDA thread
in turn, so the shapes stay small."""


import pytest
import torch

import emulated
import lstm_ext
from grouped_backward import assert_groups_match_problems_alone
from lstm_ext._checks import unpack_group
from reference import Case, Problem, assert_same, in_both_directions_and_dtypes
from test_gradcheck import CONFIGS, config_id, gradcheck_layer

SHAPES = [
    Case(),  # I != H
    Case(bias=False),
    Case(proj=3),
    Case(proj=2, bias=False),
    Case(T=1),
    Case(B=1),
    Case(I=2, H=7),
    Case(T=7, B=5, I=3, H=9, packed=True),
    Case(T=7, B=5, I=3, H=9, packed=True, proj=4, bias=False),
    Case(T=6, B=1, packed=True),
    # More cells per step than the emulated grid has threads (2 blocks of
    # 256): the kernels' grid-stride loops.
    Case(T=3, B=9, I=5, H=67, packed=True, proj=5),
]
CASES = in_both_directions_and_dtypes(SHAPES)


def case_id(case):
    return f"{case}-{str(case.dtype)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_nn_lstm(case):
    problem = Problem(case)
    assert_same(problem, problem.run_ours(layer=emulated.lstm_layer), problem.run_torch())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_cpu_op(case):
    problem = Problem(case)
    assert_same(problem, problem.run_ours(layer=emulated.lstm_layer), problem.run_ours())


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_gradcheck(cfg):
    gradcheck_layer(cfg, emulated.lstm_layer)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_matches_cpu_op(dtype):
    """float16/bfloat16 reach the CUDA executor as float (device_ops.h): same results
    as the CPU op's, up to the rounding of float sums done in another order."""
    problem = Problem(Case(T=6, B=4, packed=True, proj=3, dtype=torch.float32))
    for leaf in problem.leaves():
        leaf.data = leaf.data.to(dtype).float()

    def low_precision(layer):
        def run(input, hx, *weights, **kwargs):
            cast = [t.to(dtype) for t in (input, *hx, *weights)]
            y, (h_n, c_n) = layer(cast[0], tuple(cast[1:3]), *cast[3:], **kwargs)
            assert y.dtype == h_n.dtype == c_n.dtype == dtype
            return y.float(), (h_n.float(), c_n.float())

        return run

    ours = problem.run_ours(layer=low_precision(emulated.lstm_layer))
    cpu = problem.run_ours(layer=low_precision(lstm_ext.lstm_layer))
    leaves = problem.leaves()
    tol = dict(rtol=1e-2, atol=1e-2)
    for a, b in zip((ours.y, ours.h_n, ours.c_n), (cpu.y, cpu.h_n, cpu.c_n)):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(torch.autograd.grad(ours.loss, leaves), torch.autograd.grad(cpu.loss, leaves)):
        torch.testing.assert_close(a, b, **tol)


def test_input_of_size_zero():
    """The op takes I = 0 (nn.LSTM does not): the input GEMMs have an empty
    operand, whose leading dimension cuBLAS still wants >= 1."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 0, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(20, 0, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64))
    results = []
    for layer in (emulated.lstm_layer, lstm_ext.lstm_layer):
        y, (h_n, c_n) = layer(x, hx, w_ih, w_hh)
        loss = y.sin().sum() + h_n.sum() + c_n.sum()
        results.append([y, h_n, c_n, *torch.autograd.grad(loss, (x, w_ih, w_hh))])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kept", [False, True], ids=["laid out per call", "kept layouts"])
def test_decode_stack_matches_cpu_op(kept, dtype):
    """The whole stack in one op (lstm_inference) with the CUDA executor's own
    layouts (lstm_layer_lay_out), as a decode step runs, against the CPU's."""
    from test_ops import stack_args

    x, bs, h0, c0, weights, _, bias, layers, bidirectional = [
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in stack_args(True, True, True, False)]
    weights = [w.to(dtype) for w in weights]
    per_group = len(weights) // 4
    results = []
    for ops in (torch.ops.lstm_ext_emu, torch.ops.lstm_ext):
        laid_out = [t for k in range(4) for t in ops.lstm_layer_lay_out(
            *unpack_group(weights[k * per_group : (k + 1) * per_group], bias))] if kept else []
        with torch.no_grad():
            results.append(ops.lstm_inference(x, bs, h0, c0, weights, laid_out, bias, layers,
                                              bidirectional))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    if dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("groups, problems", [(5, None), (2, None), (5, [3, 0, 4, 1, 2])])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zoneout", [False, True])
def test_backward_groups_on_unequal_lengths(groups, problems, proj, reverse, zoneout):
    """The gathered per-problem weight gradients (csrc/layer.h) through the
    CUDA executor, with and without zoneout's weights."""
    assert_groups_match_problems_alone(torch.ops.lstm_ext_emu, groups, reverse=reverse,
                                       proj=4 * proj, problems=problems, zoneout=zoneout)
