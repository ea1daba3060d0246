"""lstm_ext.LSTM on meta tensors and under FakeTensorMode, as model-size tools and
deferred initialisation run it: nn.LSTM's shapes, dtypes and strides, forward
and backward, and nothing computed."""

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence

import lstm_ext
from module_reference import INPUTS, ModuleCase, ModuleProblem, twins

GRID = [
    ModuleCase(layers=2, bidirectional=bidirectional, proj=proj, input=input, hx=hx,
               batch_first=batch_first, dtype=dtype)
    for bidirectional, proj, input, hx, batch_first, dtype in itertools.product(
        (False, True), (0, 3), INPUTS, (False, True), (False, True),
        (torch.float32, torch.float64))
]


def on_meta(problem: ModuleProblem):
    """The problem with its data and output gradients on the meta device (lengths stay on
    the CPU, as pack_padded_sequence wants them)."""
    for name in ("x", "h0", "c0", "dy", "dh", "dc"):
        setattr(problem, name, getattr(problem, name).to("meta"))
    return problem


def assert_same_metadata(ours, theirs, device):
    if isinstance(theirs.output, PackedSequence):
        assert torch.equal(ours.output.batch_sizes, theirs.output.batch_sizes)
        assert ours.output.batch_sizes.device.type == "cpu"
    pairs = [(getattr(ours, n), getattr(theirs, n), n) for n in ("y", "h_n", "c_n")]
    pairs += [(ours.grads[n], g, f"grad of {n}") for n, g in theirs.grads.items()]
    for a, b, name in pairs:
        assert (a.shape, a.dtype, a.stride()) == (b.shape, b.dtype, b.stride()), name
        assert a.device.type == device, name


@pytest.mark.parametrize("case", GRID, ids=str)
def test_meta_tensors(case):
    ref, ours = (m.to("meta") for m in twins(case))
    problem = on_meta(ModuleProblem(case))
    assert_same_metadata(problem.run(ours), problem.run(ref), "meta")


def test_built_and_run_under_the_meta_device():
    """`with torch.device("meta")` makes the parameters and every tensor the forward
    creates (zero states, padded batch sizes) on meta, as for nn.LSTM."""
    with torch.device("meta"):
        ours = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
        x = torch.randn(5, 2, 4, requires_grad=True)
        y, (h_n, c_n) = ours(x)
        y.sum().backward()
    assert (y.shape, h_n.shape, c_n.shape) == ((5, 2, 6), (4, 2, 3), (4, 2, 6))
    assert y.is_meta and x.grad.is_meta and ours.weight_hh_l1_reverse.grad.is_meta


# Packing under FakeTensorMode makes batch sizes data-dependent, which nn.LSTM cannot
# take either; the meta tests cover packed input.
@pytest.mark.parametrize(
    "case", [c for c in GRID if c.dtype == torch.float32 and c.input in ("padded", "unbatched")],
    ids=str)
def test_fake_tensor_mode(case):
    problem, (ref, ours) = ModuleProblem(case), twins(case)
    with FakeTensorMode(allow_non_fake_inputs=True):
        assert_same_metadata(problem.run(ours), problem.run(ref), "cpu")
