"""lstm_ext.LSTM against torch.nn.LSTM: the parity grid. (gradcheck of the
module: test_module_autograd_modes.py.)"""

import itertools

import pytest
import torch

from module_reference import INPUTS, ModuleCase, ModuleProblem, assert_same_results, twins
from reference import tolerance

GRID = [
    ModuleCase(
        layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
        proj=proj, input=input, hx=hx, dtype=dtype,
    )
    for layers, bidirectional, batch_first, bias, proj, input, hx, dtype in itertools.product(
        (1, 2, 3), (False, True), (False, True), (True, False), (0, 3), INPUTS, (False, True),
        (torch.float64, torch.float32),
    )
]


@pytest.mark.parametrize("case", GRID, ids=str)
def test_matches_nn_lstm(case):
    ref, ours = twins(case)
    problem = ModuleProblem(case)
    assert_same_results(problem.run(ours), problem.run(ref), **tolerance(case.dtype))


def test_is_an_nn_lstm():
    ref, ours = twins(ModuleCase(layers=2, bidirectional=True, proj=3, bias=False))
    assert isinstance(ours, torch.nn.LSTM)
    assert type(ours).forward is not torch.nn.LSTM.forward
    assert repr(ours) == repr(ref)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("hx", [False, True])
def test_empty_batch(batch_first, hx):
    """nn.LSTM takes a batch of none, and its output still takes part in backward."""
    case = ModuleCase(layers=2, bidirectional=True, proj=3, batch_first=batch_first)
    ref, ours = twins(case)
    x = torch.randn((0, 5, 4) if batch_first else (5, 0, 4), dtype=torch.float64)
    states = (torch.zeros(4, 0, 3, dtype=x.dtype), torch.zeros(4, 0, 6, dtype=x.dtype))
    got, expected = ours(x, states if hx else None), ref(x, states if hx else None)
    for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
        assert a.shape == b.shape and a.stride() == b.stride() and a.requires_grad
    got[0].sum().backward()


def test_packed_unsorted_hx_with_extra_rows():
    """nn.LSTM permutes hx to the packed order before anything checks it, which drops
    rows beyond the batch: accepted, and answered alike."""
    case = ModuleCase(layers=2, input="packed")
    ref, ours = twins(case)
    problem = ModuleProblem(case)
    _, h0, c0, input = problem.inputs()
    hx = (torch.cat([h0, h0], 1), torch.cat([c0, c0], 1))
    got, expected = ours(input, hx), ref(input, hx)
    torch.testing.assert_close(got[0].data, expected[0].data, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-10)


def test_backward_after_eval_mode_forward():
    """Attribution methods differentiate a model in eval mode (cuDNN refuses)."""
    case = ModuleCase(layers=2, bidirectional=True, proj=3, input="packed", dropout=0.5)
    ref, ours = twins(case)
    ref.eval(), ours.eval()
    problem = ModuleProblem(case)
    assert_same_results(problem.run(ours), problem.run(ref), rtol=1e-10, atol=1e-10)
