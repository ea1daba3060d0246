"""Both ways the CPU shares a layer's steps between its threads, forced on
small shapes: by sequences, and by hidden units (pieces of 64 units, so H >= 65
for two). Outputs, final states, every gradient, the inference path, tangents
and per-sample gradients against nn.LSTM, and bitwise repeatability."""

import pytest
import torch

from cpu_split import SEQUENCES, UNITS, cpu_split
from grouped_backward import assert_groups_match_problems_alone
from lstm_ext import _ops
from reference import Case, Problem, assert_same, tolerance

CASES = [
    Case(T=5, B=3, I=4, H=65),
    Case(T=6, B=4, I=5, H=130, packed=True, reverse=True, proj=70),
    Case(T=4, B=2, I=3, H=128, bias=False, proj=3),
    Case(T=6, B=5, I=4, H=200, packed=True, dtype=torch.float32),
    Case(T=5, B=1, I=4, H=192, reverse=True, dtype=torch.float32),
]
SPLITS = {"sequences": SEQUENCES, "units": UNITS}


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_nn_lstm(case, split):
    problem = Problem(case)
    leaves = [leaf.detach() for leaf in problem.leaves()]
    tangents = tuple(torch.randn_like(t) for t in leaves)
    with cpu_split(split):
        ours = problem.run_ours()
        with torch.no_grad():
            inference = problem.ours_fn()(*leaves)
        _, ours_tangents = torch.func.jvp(problem.ours_fn(), tuple(leaves), tangents)
    assert_same(problem, ours, problem.run_torch())
    with torch.no_grad():
        reference = problem.torch_fn()(*leaves)
    theirs = torch.autograd.functional.jvp(problem.torch_fn(), tuple(leaves), tangents)[1]
    tol = tolerance(case.dtype)
    for a, b in zip((*inference, *ours_tangents), (*reference, *theirs)):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
def test_per_sample_gradients(split):
    """The backward's weight gradients per problem (groups) under each split."""
    problem = Problem(Case(T=5, B=4, I=3, H=130, proj=66))
    weights = tuple(w.detach() for w in problem.weights())
    x, h0, c0 = (t.detach().transpose(0, 1).unsqueeze(2) for t in problem.leaves()[:3])

    def loss(weights, x, h0, c0):
        y, h_n, c_n = problem.ours_fn()(x, h0, c0, *weights)
        return y.sin().sum() + h_n.square().sum() + c_n.sum()

    with cpu_split(split):
        per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0))(
            weights, x, h0, c0)
        for k in range(4):
            expected = torch.func.grad(loss)(weights, x[k], h0[k], c0[k])
            for a, b in zip(per_sample, expected):
                torch.testing.assert_close(a[k], b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
def test_bitwise_repeatable(split):
    problem = Problem(Case(T=6, B=4, I=5, H=130, packed=True, proj=70, dtype=torch.float32))
    with cpu_split(split):
        runs = []
        for _ in range(3):
            run = problem.run_ours()
            runs.append([run.y, run.h_n, run.c_n,
                         *torch.autograd.grad(run.loss, problem.leaves())])
    for again in runs[1:]:
        for a, b in zip(runs[0], again):
            assert torch.equal(a, b)


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("reverse", [False, True])
def test_per_sequence_gradients_on_unequal_lengths(split, reverse):
    """groups = B on a packed batch of unequal lengths (Opacus's per-sample
    gradients), with a hidden size each split cuts."""
    with cpu_split(split):
        assert_groups_match_problems_alone(_ops, 5, reverse=reverse, proj=66, H=130,
                                           dtype=torch.float32, tol=1e-3)
