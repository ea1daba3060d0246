"""The inference path: where nothing can ask for a derivative, the layer runs
lstm_ext::lstm_layer_inference, which saves nothing (no gates, no cell states
per row) and computes the input projection in blocks of steps. Its results
against nn.LSTM and against the training path."""

import dataclasses

import pytest
import torch

import emulated
import lstm_ext
from reference import Case, Problem, in_both_directions_and_dtypes, tolerance

SHAPES = [
    Case(),
    Case(bias=False),
    Case(proj=3),
    Case(T=1),
    Case(B=1),
    Case(T=7, B=5, I=3, H=9, packed=True),
    Case(T=7, B=5, I=3, H=9, packed=True, proj=4, bias=False),
    # More rows than one block of the input projection holds (G = 4096: 512 rows).
    Case(T=150, B=4, I=3, H=1024, packed=True),
]
CASES = in_both_directions_and_dtypes(SHAPES)


def case_id(case):
    return f"{case}-{str(case.dtype)[6:]}"


def ops_called(fn):
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("lstm_ext::")}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_nn_lstm_and_the_training_path(case):
    problem = Problem(case)
    leaves = [leaf.detach() for leaf in problem.leaves()]
    with torch.no_grad():
        inference = problem.ours_fn()(*leaves)
        reference = problem.torch_fn()(*leaves)
    training = problem.ours_fn()(*problem.leaves())
    for name, a, b, c in zip(("y", "h_n", "c_n"), inference, reference, training):
        torch.testing.assert_close(a, b, **tolerance(case.dtype), msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(a, c, **tolerance(case.dtype), msg=lambda m: f"{name}: {m}")


def test_no_derivative_possible_runs_the_inference_op():
    """Grad mode off, or nothing requiring grad: the inference op, nothing
    saved for a backward; eval mode with parameters that require grad still
    saves (backward after an eval-mode forward works)."""
    model = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4)
    # The whole stack in one op; the first call lays the weights out and
    # keeps them (test_layouts.py).
    inference = {"lstm_ext::lstm_inference"}
    with torch.no_grad():
        assert ops_called(lambda: model(x)) == inference | {"lstm_ext::lstm_layer_lay_out"}
        assert ops_called(lambda: model(x)) == inference
    frozen = lstm_ext.LSTM(4, 6).requires_grad_(False)
    frozen(x)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        assert ops_called(lambda: frozen(x)) == inference
        out, _ = frozen(x)
    assert not saved and out.grad_fn is None
    model.eval()
    assert ops_called(lambda: model(x)) == {"lstm_ext::lstm_layer"}
    assert "lstm_ext::lstm_layer" in ops_called(lambda: model(x.requires_grad_())[0].sum())


def test_vmap_without_grad_runs_the_inference_op():
    model = lstm_ext.LSTM(4, 6)
    xs = torch.randn(3, 5, 2, 4)
    with torch.no_grad():
        assert ops_called(lambda: torch.func.vmap(model)(xs)) == {
            "lstm_ext::lstm_layer_inference"}
        mapped = torch.func.vmap(model)(xs)
        for k in range(3):
            torch.testing.assert_close(mapped[0][k], model(xs[k])[0], rtol=1e-6, atol=1e-6)


def test_inference_op_refuses_to_be_differentiated():
    args = [torch.randn(6, 3), torch.tensor([2, 2, 2]), torch.zeros(2, 5), torch.zeros(2, 5),
            torch.randn(20, 3, requires_grad=True), torch.randn(20, 5), None, None, None, False]
    with pytest.raises(RuntimeError, match="lstm_layer_inference has no derivative"):
        torch.ops.lstm_ext.lstm_layer_inference(*args)


@pytest.mark.parametrize("case", [Case(T=7, B=5, I=3, H=9, packed=True, proj=4),
                                  Case(T=3, B=9, I=5, H=67, packed=True, reverse=True)],
                         ids=str)
def test_emulated_cuda_inference_matches_cpu(case):
    problem = Problem(dataclasses.replace(case, dtype=torch.float64))
    leaves = [leaf.detach() for leaf in problem.leaves()]
    with torch.no_grad():
        emu = problem.ours_fn(emulated.lstm_layer)(*leaves)
        cpu = problem.ours_fn()(*leaves)
    for a, b in zip(emu, cpu):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
