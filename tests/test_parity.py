"""lstm_ext.lstm_layer against torch.nn.LSTM: outputs, final states, every gradient."""


import pytest
import torch

import lstm_ext
from cpu_native import reduced_path
from reference import Case, Problem, assert_same, in_both_directions_and_dtypes

SHAPES = [
    Case(),  # I != H
    Case(I=6, H=6),
    Case(bias=False),
    Case(proj=3),
    Case(proj=2, bias=False),
    Case(T=1),
    Case(B=1),
    Case(H=1),
    Case(H=2, proj=1),
    Case(T=7, B=5, I=3, H=9, packed=True),
    Case(T=7, B=5, I=3, H=9, packed=True, proj=4, bias=False),
    Case(T=6, B=1, packed=True),
    Case(T=1, B=4, packed=True),
    # Enough work per step to run on every thread, and H no multiple of the
    # vector width.
    Case(T=3, B=70, I=16, H=301, packed=True),
    # More rows (558) than one block of the backward holds (4H = 4096 gates:
    # 512 rows), with a projection.
    Case(T=80, B=12, I=3, H=1024, packed=True, proj=40),
]
CASES = in_both_directions_and_dtypes(SHAPES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c}-{str(c.dtype)[6:]}")
def test_matches_nn_lstm(case):
    problem = Problem(case)
    assert_same(problem, problem.run_ours(), problem.run_torch())


@pytest.mark.parametrize("reverse", [False, True])
def test_unused_outputs_and_frozen_weights(reverse):
    """Gradients that are not needed are not computed, and the rest stay right:
    only h_n feeds the loss (y and c_n get no gradient), weights are frozen."""
    problem = Problem(Case(T=6, B=4, packed=True, proj=3, reverse=reverse))
    for w in problem.weights():
        w.requires_grad_(False)
    ours, theirs = problem.run_ours(), problem.run_torch()
    leaves = [problem.x, problem.h0, problem.c0]
    g_ours = torch.autograd.grad(ours.h_n.sum(), leaves)
    g_theirs = torch.autograd.grad(theirs.h_n.sum(), leaves)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_hx_none_is_zeros():
    problem = Problem(Case(packed=True))
    w = problem.weights()
    x = problem.x.detach().reshape(-1, problem.case.I)[: problem.case.T]
    batch_sizes = torch.ones(problem.case.T, dtype=torch.int64)
    zeros = torch.zeros(1, problem.case.H, dtype=x.dtype)
    y0, (h0, c0) = lstm_ext.lstm_layer(x, None, *w, batch_sizes=batch_sizes)
    y1, (h1, c1) = lstm_ext.lstm_layer(x, (zeros, zeros), *w, batch_sizes=batch_sizes)
    assert torch.equal(y0, y1) and torch.equal(h0, h1) and torch.equal(c0, c1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_reduced_precision_computes_in_float(dtype, reverse):
    """On the upcast path, float16/bfloat16 inputs give exactly what float32 gives
    on the same (rounded) values, cast back: the math and the cell state are float
    inside (the native path rounds h each step: test_cpu_native.py)."""
    problem = Problem(Case(T=6, B=4, packed=True, proj=3, reverse=reverse, dtype=torch.float32))
    for leaf in problem.leaves():
        leaf.data = leaf.data.to(dtype).float()
    full = problem.run_ours()
    leaves = problem.leaves()
    g_full = torch.autograd.grad(full.loss, leaves)

    low = [leaf.detach().to(dtype).requires_grad_() for leaf in leaves]
    x, h0, c0, *w = low
    d = problem.direction
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, problem.lengths, enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    with reduced_path("upcast"):
        y, (h_n, c_n) = lstm_ext.lstm_layer(
            packed.data, (h0[d][order], c0[d][order]), *w[:4], w[4],
            batch_sizes=packed.batch_sizes, reverse=reverse,
        )
    assert y.dtype == h_n.dtype == c_n.dtype == dtype
    torch.testing.assert_close(y, full.y.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(h_n[unorder], full.h_n.to(dtype), rtol=0, atol=0)
    loss = (y.float() * problem.dy).sum() + (h_n[unorder].float() * problem.dh).sum()
    loss = loss + (c_n[unorder].float() * problem.dc).sum()
    for a, b in zip(torch.autograd.grad(loss, low), g_full):
        assert a.dtype == dtype
        # The output gradients reach the kernel rounded to `dtype`.
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2)
