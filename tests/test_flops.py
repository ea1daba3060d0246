"""FLOP counting (torch.utils.flop_counter.FlopCounterMode) of every op against the
closed form: 2 x the multiply-adds of the products, one row per real step."""

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lstm_ext
from module_reference import ModuleCase, ModuleProblem, twins

GRID = [
    ModuleCase(layers=layers, bidirectional=bidirectional, proj=proj, bias=bias, input=input,
               T=7, B=4, I=5, H=8)
    for layers, bidirectional, proj, bias, input in itertools.product(
        (1, 2), (False, True), (0, 3), (True, False), ("padded", "packed", "unbatched"))
]


def closed_form(case: ModuleCase, rows: int, backward: bool, input_grad: bool,
                layer_norm: bool = False) -> int:
    """The products of forward (and backward, with every weight's gradient and, as
    input_grad says, the input's) over all layers and directions. LayerNorm's
    backward makes the forward's x W_ih^T and h W_hh^T again."""
    D, H, P = 2 if case.bidirectional else 1, case.H, case.proj or case.H
    proj = H if case.proj else 0
    total = 0
    for layer in range(case.layers):
        inputs = case.I if layer == 0 else D * P
        forward = 4 * H * (inputs + P) + proj * P  # x W_ih^T, h W_hh^T, h W_hr^T
        total += D * 2 * rows * forward
        if backward:
            wants_dx = input_grad or layer > 0
            # dgates W_hh and dy W_hr per step; dx; dW_ih, dW_hh, dW_hr.
            back = 4 * H * P + proj * P + 4 * H * inputs * wants_dx + forward
            back += 4 * H * (inputs + P) * layer_norm
            total += D * 2 * rows * back
    return total


def count(fn) -> dict:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def forward_and_backward(module, case: ModuleCase, problem: ModuleProblem):
    """backward(), not autograd.grad: FlopCounterMode's module tracker cannot follow
    the latter to leaves."""
    _, h0, c0, input = problem.inputs()
    output, (h_n, c_n) = module(input, (h0, c0) if case.hx else None)
    y = output.data if case.input == "packed" else output
    (y.sum() + h_n.sum() + c_n.sum()).backward()


def rows_of(case: ModuleCase, problem: ModuleProblem) -> int:
    if case.input == "packed":
        return int(problem.lengths.sum())
    return case.T * (1 if case.input == "unbatched" else case.B)


@pytest.mark.parametrize("case", GRID, ids=str)
def test_forward_and_backward(case):
    _, ours = twins(case)
    problem = ModuleProblem(case)
    rows = rows_of(case, problem)
    counts = count(lambda: forward_and_backward(ours, case, problem))
    assert set(counts) == {"lstm_ext.lstm_layer", "lstm_ext.lstm_layer_backward"}
    assert sum(counts.values()) == closed_form(case, rows, backward=True, input_grad=True)
    assert counts["lstm_ext.lstm_layer"] == closed_form(case, rows, False, False)


@pytest.mark.parametrize("case", GRID[::4], ids=str)
def test_layer_norm_forward_and_backward(case):
    _, plain = twins(case)
    module = lstm_ext.LSTM(**case.kwargs(), layer_norm=True, dtype=case.dtype)
    module.load_state_dict(plain.state_dict(), strict=False)
    problem = ModuleProblem(case)
    rows = rows_of(case, problem)
    counts = count(lambda: forward_and_backward(module, case, problem))
    assert counts["lstm_ext.lstm_layer"] == closed_form(case, rows, False, False)
    assert sum(counts.values()) == closed_form(case, rows, backward=True, input_grad=True,
                                               layer_norm=True)


@pytest.mark.parametrize("case", GRID[::3], ids=str)
def test_inference(case):
    _, ours = twins(case)
    problem = ModuleProblem(case)
    *_, input = problem.inputs()
    expected = closed_form(case, rows_of(case, problem), False, False)
    with torch.no_grad():
        # The module's whole stack in one op (it keeps its layouts), or one
        # op per layer and direction where lstm_ext.lstm keeps none.
        assert count(lambda: ours(input)) == {"lstm_ext.lstm_inference": expected}
        ours.flatten_parameters()
        ours._kept_layouts = None
        assert count(lambda: ours(input)) == {"lstm_ext.lstm_layer_inference": expected}


def test_backward_counts_only_the_gradients_asked_for():
    """Input not requiring grad: no dx product for the first layer."""
    case = ModuleCase(layers=2, bidirectional=True, proj=3, T=7, B=4, I=5, H=8)
    _, ours = twins(case)
    x = torch.randn(case.T, case.B, case.I, dtype=case.dtype)
    counts = count(lambda: ours(x)[0].sum().backward())
    rows = case.T * case.B
    assert sum(counts.values()) == closed_form(case, rows, backward=True, input_grad=False)


def test_tangent_op():
    """jvp in x: the forward, then per step the tangent through W_hh and W_hr, and
    dx W_ih^T."""
    T, B, I, H, P = 6, 3, 5, 8, 3  # noqa: E741
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, P)
    w_hr = torch.randn(P, H)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, P), torch.randn(B, H)

    def layer(x):
        return lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, w_hr=w_hr)[0]

    counts = count(lambda: torch.func.jvp(layer, (x,), (torch.randn_like(x),)))
    rows = T * B
    assert counts == {
        "lstm_ext.lstm_layer": 2 * rows * (4 * H * (I + P) + H * P),
        "lstm_ext.lstm_layer_jvp": 2 * rows * (4 * H * P + H * P + 4 * H * I),
    }
