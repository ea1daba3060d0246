"""lstm_ext.LSTM's options beyond nn.LSTM against the plain loop of cells in
tests/variant_reference.py, in every module configuration: weight_drop,
recurrent_dropout.

Random masks are recovered from the gradients (weight drop's M is where
weight_hh's gradient is not zero) or drawn again from the same seed as
lstm_ext.lstm draws them (recurrent dropout's), and given to the reference;
where h0 has a gradient, it shows the recurrent dropout mask too."""

import dataclasses
import itertools
import math
import pickle

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import PackedSequence

import lstm_ext
from compile_backend import BACKEND
from module_reference import INPUTS, ModuleCase, ModuleProblem, twins
from reference import tolerance
from variant_reference import (assert_close_to_reference,
                               assert_layers_agree_with_options, reference_run)

CASES = [
    ModuleCase(layers=layers, bidirectional=bidirectional, proj=proj, input=input,
               batch_first=batch_first, dtype=dtype)
    for (layers, batch_first), bidirectional, proj, input, dtype in itertools.product(
        ((1, False), (2, True)), (False, True), (0, 3), INPUTS, (torch.float64, torch.float32))
]
CASES += [ModuleCase(layers=2, bidirectional=True, hx=False, input="packed"),
          ModuleCase(layers=2, bias=False, proj=2), ModuleCase(T=1, B=1, hx=False)]


def variant(case: ModuleCase, **options):
    """lstm_ext.LSTM with `options`, holding twins(case)'s parameters."""
    _, plain = twins(case, torch.float64)
    module = lstm_ext.LSTM(**case.kwargs(), **options, dtype=torch.float64)
    module.load_state_dict(plain.state_dict())
    return module.to(case.dtype)


def suffixes(case: ModuleCase):
    return [f"_l{k}{d}" for k in range(case.layers)
            for d in ("", "_reverse")[: 2 if case.bidirectional else 1]]


def seeded(problem, module, seed=3):
    torch.manual_seed(seed)
    return problem.run(module)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_drop_training_matches_the_cell_loop(case):
    """Training: each W_hh is W_hh ⊙ M / (1 - p), one M per layer and direction
    shared by every step and sequence (else the reference, which uses one,
    would differ)."""
    p = 0.4
    problem = ModuleProblem(case)
    ours = seeded(problem, variant(case, weight_drop=p))
    masks = {s: (ours.grads["weight_hh" + s] != 0).double() for s in suffixes(case)}
    if case.hx or case.T > 1:  # a zero h_{t-1} everywhere shows no mask
        for mask in masks.values():
            assert 0 < mask.mean() < 1
    ref = reference_run(problem, variant(case), masks, p)
    assert_close_to_reference(ours, ref, **tolerance(case.dtype))


@pytest.mark.parametrize("option", ["weight_drop", "recurrent_dropout"])
@pytest.mark.parametrize("case", CASES[:: 3], ids=str)
def test_options_in_eval_are_the_plain_lstm(option, case):
    module = variant(case, **{option: 0.6}).eval()
    problem = ModuleProblem(case)
    assert_close_to_reference(problem.run(module), reference_run(problem, module, {}, 0.0),
                              **tolerance(case.dtype))
    assert module.layout_cache_bytes() == 0  # a call with grad keeps none
    with torch.no_grad():
        module(problem.inputs()[3])
    assert module.layout_cache_bytes() > 0  # eval without grad: the plain decode path


def test_weight_drop_masks_are_drawn_per_call_layer_and_direction():
    case = ModuleCase(layers=2, bidirectional=True, H=32, I=8)
    module = variant(case, weight_drop=0.3)
    problem = ModuleProblem(case)
    first, again, other = seeded(problem, module), seeded(problem, module), seeded(problem, module, 4)
    masks = [first.grads["weight_hh" + s] != 0 for s in suffixes(case)]
    for mask in masks:  # 4096 elements each: 0.3 within 5 sigma
        assert abs(1 - mask.double().mean() - 0.3) < 5 * math.sqrt(0.21 / mask.numel())
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(masks, 2))
    assert torch.equal(first.y, again.y)  # seeded runs repeat bitwise
    assert all(torch.equal(first.grads[k], again.grads[k]) for k in first.grads)
    assert not torch.equal(first.y, other.y)
    assert not torch.equal(first.y, problem.run(module).y)  # unseeded: a new mask per call


def test_weight_drop_without_grad_in_training_draws_masks_and_keeps_no_layout():
    case = ModuleCase(H=16)
    module = variant(case, weight_drop=0.5)
    _, _, _, input = ModuleProblem(case).inputs()
    with torch.no_grad():
        torch.manual_seed(0)
        a = module(input)[0]
        torch.manual_seed(1)
        b = module(input)[0]
    assert not torch.equal(a, b) and module.layout_cache_bytes() == 0
    torch.manual_seed(0)
    torch.testing.assert_close(module(input)[0], a, rtol=0, atol=1e-14)  # the same mask
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(input)[0], module(input)[0])


@pytest.mark.parametrize("option", ["weight_drop", "recurrent_dropout"])
@pytest.mark.parametrize("case", [ModuleCase(layers=2, bidirectional=True, proj=3, T=3, B=2,
                                             H=4, I=3),
                                  ModuleCase(input="packed", T=3, B=3, H=3, I=2)], ids=str)
def test_options_gradcheck_and_gradgradcheck(option, case):
    """Every input and parameter, with one mask (the seed is set each call),
    reverse and forward mode (recurrent dropout: the fused tangent op), and
    second derivatives (the composite)."""
    assert_module_gradchecks(variant(case, **{option: 0.5}), case)


def assert_module_gradchecks(module, case):
    """gradcheck (reverse and forward mode) and gradgradcheck of `module` on
    case's inputs and every parameter, the seed set before each call (one set
    of masks)."""
    problem = ModuleProblem(case)
    _, h0, c0, input = problem.inputs()
    packed = isinstance(input, PackedSequence)
    x = (input.data if packed else input).detach().requires_grad_()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def fn(x, h0, c0, *params):
        torch.manual_seed(0)
        data = PackedSequence(x, *input[1:]) if packed else x
        out, (h, c) = functional_call(module, dict(zip(names, params)), (data, (h0, c0)))
        return (out.data if packed else out), h, c
    args = (x, h0, c0, *params)
    assert torch.autograd.gradcheck(fn, args, check_forward_ad=True, check_batched_grad=False)
    assert torch.autograd.gradgradcheck(fn, args)


def test_weight_drop_under_torch_func():
    """Per-sample gradients by vmap(grad) with one mask for the batch
    (randomness="same"), equal to one-sample backward passes with that mask;
    vmap's default refuses the random draw with its own error."""
    case = ModuleCase(H=5, I=3, B=3, T=4)
    module = variant(case, weight_drop=0.5)
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = ModuleProblem(case).x

    def loss(params, x):
        return functional_call(module, params, (x.unsqueeze(1),))[0].square().sum()
    torch.manual_seed(5)
    per_sample = vmap(grad(loss), in_dims=(None, 1), randomness="same")(params, x)
    mask = per_sample["weight_hh_l0"].abs().sum(0) != 0
    masked = dict(params, weight_hh_l0=params["weight_hh_l0"] * mask / 0.5)
    plain = variant(case)
    for b in range(case.B):
        one = grad(lambda p, x: functional_call(plain, p, (x.unsqueeze(1),))[0].square().sum())(
            masked, x[:, b])
        for name, g in one.items():
            expected = g * mask / 0.5 if name == "weight_hh_l0" else g
            torch.testing.assert_close(per_sample[name][b], expected)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(grad(loss), in_dims=(None, 1))(params, x)


@pytest.mark.parametrize("option", ["weight_drop", "recurrent_dropout"])
def test_options_compile_fullgraph(option):
    """One graph; the compiled graph draws its own masks (Inductor's RNG), read
    off the gradients: weight_hh's, h0's."""
    case = ModuleCase(layers=2, bidirectional=True, dtype=torch.float32)
    module = variant(case, **{option: 0.5})
    problem = ModuleProblem(case)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=BACKEND)
    with torch._dynamo.config.patch(allow_rnn=True):  # see test_compile.py
        out = seeded(problem, compiled)
    out.grads = {k.removeprefix("_orig_mod."): g for k, g in out.grads.items()}
    if option == "weight_drop":
        masks = {s: (out.grads["weight_hh" + s] != 0).double() for s in suffixes(case)}
        ref = reference_run(problem, variant(case), masks, 0.5)
    else:
        scales = dict(zip(suffixes(case), (out.grads["h0"] != 0).double() / 0.5))
        ref = reference_run(problem, variant(case), {}, 0.0, scales)
    assert_close_to_reference(out, ref, **tolerance(case.dtype))
    module.eval()
    with torch._dynamo.config.patch(allow_rnn=True):
        y = compiled(problem.inputs()[3])[0]
    torch.testing.assert_close(y, twins(case)[0].eval()(problem.inputs()[3])[0])


def test_weight_drop_on_the_emulated_cuda_op():
    """Weight drop reaches the op as its W_hh: the CUDA kernels (emulated) take
    a dropped one as the CPU's do, forward and backward."""
    emulated = pytest.importorskip("emulated")
    gen = torch.Generator().manual_seed(0)
    x, h0, c0 = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in
                 ((5, 3, 4), (3, 6), (3, 6)))
    w_ih, w_hh = (torch.randn(24, n, generator=gen, dtype=torch.float64) for n in (4, 6))
    results = []
    for layer in (lstm_ext.lstm_layer, emulated.lstm_layer):
        leaves = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh)]
        torch.manual_seed(0)
        dropped = torch.nn.functional.dropout(leaves[4], 0.5)
        y, (h, c) = layer(leaves[0], tuple(leaves[1:3]), leaves[3], dropped)
        loss = y.sin().sum() + h.sum() + c.square().sum()
        results.append((y, h, c, *torch.autograd.grad(loss, leaves)))
    assert (results[0][-1] == 0).any()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def recurrent_masks(case: ModuleCase, problem: ModuleProblem, p: float, seed: int = 3):
    """The scales m / (1 - p) lstm_ext.lstm draws after `seed` (nothing random
    before them without weight_drop): one tensor of h0's shape (groups, B, P),
    the batch in packed (sorted) order; by suffix, in the input's order."""
    D, P = (2 if case.bidirectional else 1), case.proj or case.H
    B = 1 if case.input == "unbatched" else case.B
    torch.manual_seed(seed)
    m = torch.rand(case.layers * D, B, P).ge_(p).to(case.dtype).div_(1 - p)
    input = problem.inputs()[3]
    if isinstance(input, PackedSequence) and input.unsorted_indices is not None:
        m = m.index_select(1, input.unsorted_indices)
    return dict(zip(suffixes(case), m.squeeze(1) if B == 1 and case.input == "unbatched" else m))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_recurrent_dropout_training_matches_the_cell_loop(case):
    """Training: h enters each recurrent product as h ⊙ m / (1 - p), one m per
    sequence and unit for every step, h0 included; the outputs are h."""
    p = 0.4
    problem = ModuleProblem(case)
    ours = seeded(problem, variant(case, recurrent_dropout=p))
    masks = recurrent_masks(case, problem, p)
    if case.hx:  # dL/dh0 = (dgates W_hh) ⊙ m / (1 - p): zero where m is
        stacked = torch.stack(list(masks.values()))
        assert torch.equal(ours.grads["h0"] == 0, stacked == 0)
    ref = reference_run(problem, variant(case), {}, 0.0, masks)
    assert_close_to_reference(ours, ref, **tolerance(case.dtype))


@pytest.mark.parametrize("case", [ModuleCase(layers=2, bidirectional=True, proj=3,
                                             input="packed"),
                                  ModuleCase(H=70, B=5, dtype=torch.float32)], ids=str)
def test_recurrent_dropout_without_grad_draws_the_same_masks(case):
    """In training mode without grad (the inference op) the same seed gives the
    same masks and the same results as with grad; no layout is kept."""
    module = variant(case, recurrent_dropout=0.5)
    problem = ModuleProblem(case)
    _, h0, c0, input = problem.inputs()
    hx = (h0.detach(), c0.detach())
    torch.manual_seed(0)
    with_grad = module(input, hx)
    torch.manual_seed(0)
    with torch.no_grad():
        without = module(input, hx)
    for a, b in zip((with_grad[0], *with_grad[1]), (without[0], *without[1])):
        a, b = (a.data, b.data) if isinstance(a, PackedSequence) else (a, b)
        torch.testing.assert_close(b, a.detach(), **tolerance(case.dtype))
    assert module.layout_cache_bytes() == 0


def test_options_combine_with_each_other_and_dropout():
    """weight_drop and recurrent_dropout together against the cell loop, each
    mask read off its gradient (weight_hh's, h0's); with dropout between
    layers too, seeded runs repeat."""
    case = ModuleCase(layers=2, bidirectional=True, proj=3, input="packed")
    problem = ModuleProblem(case)
    ours = seeded(problem, variant(case, weight_drop=0.5, recurrent_dropout=0.3))
    masks = {s: (ours.grads["weight_hh" + s] != 0).double() for s in suffixes(case)}
    scales = dict(zip(suffixes(case), (ours.grads["h0"] != 0).double() / 0.7))
    for mask in (*masks.values(), *scales.values()):
        assert 0 < (mask != 0).double().mean() < 1
    ref = reference_run(problem, variant(case), masks, 0.5, scales)
    assert_close_to_reference(ours, ref, **tolerance(case.dtype))
    dropping = dataclasses.replace(case, layers=3, dropout=0.5)
    module = variant(dropping, weight_drop=0.5, recurrent_dropout=0.3)
    problem = ModuleProblem(dropping)
    first, again = seeded(problem, module), seeded(problem, module)
    assert torch.equal(first.y, again.y)
    assert all(torch.equal(first.grads[k], again.grads[k]) for k in first.grads)


def test_recurrent_scale_under_vmap_folds_into_the_batch():
    """lstm_layer with a per-problem recurrent_scale under vmap (folded into
    the batch, forward and per-sample gradients) equals a loop of problems."""
    gen = torch.Generator().manual_seed(0)
    n, T, B, I, H = 3, 4, 2, 3, 5
    x = torch.randn(n, T, B, I, generator=gen, dtype=torch.float64)
    h0, c0 = (torch.randn(n, B, H, generator=gen, dtype=torch.float64) for _ in range(2))
    scale = torch.randint(0, 2, (n, B, H), generator=gen).double() * 2
    w_ih, w_hh = (torch.randn(4 * H, k, generator=gen, dtype=torch.float64) for k in (I, H))

    def loss(w_hh, x, h0, c0, s):
        y, (h, c) = lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, recurrent_scale=s)
        return y.sin().sum() + h.sum() + c.square().sum()
    mapped = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0))(w_hh, x, h0, c0, scale)
    for k in range(n):
        torch.testing.assert_close(mapped[k], grad(loss)(w_hh, x[k], h0[k], c0[k], scale[k]))
    ys = vmap(lambda *a: lstm_ext.lstm_layer(a[0], a[1:3], w_ih, w_hh, recurrent_scale=a[3])[0])(
        x, h0, c0, scale)
    for k in range(n):
        torch.testing.assert_close(ys[k], lstm_ext.lstm_layer(
            x[k], (h0[k], c0[k]), w_ih, w_hh, recurrent_scale=scale[k])[0])

    # One scale shared by the problems (not mapped), and Jacobians by forward
    # mode under vmap (the tangent op's batching rule).
    def last_h(x, h0, s):
        return lstm_ext.lstm_layer(x, (h0, c0[0]), w_ih, w_hh, recurrent_scale=s)[1][0]
    shared = vmap(last_h, in_dims=(0, 0, None))(x, h0, scale[0])
    jacobians = vmap(torch.func.jacfwd(last_h), in_dims=(0, 0, None))(x, h0, scale[0])
    for k in range(n):
        torch.testing.assert_close(shared[k], last_h(x[k], h0[k], scale[0]))
        torch.testing.assert_close(jacobians[k], torch.func.jacrev(last_h)(x[k], h0[k], scale[0]))


def test_recurrent_scale_is_a_constant():
    x, w_ih, w_hh = torch.randn(3, 2, 4), torch.randn(20, 4), torch.randn(20, 5)
    with pytest.raises(RuntimeError, match="recurrent_scale is a constant"):
        lstm_ext.lstm_layer(x, None, w_ih, w_hh, recurrent_scale=torch.ones(2, 5,
                                                                            requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recurrent_scale_on_the_emulated_cuda_op(dtype):
    """The CUDA kernels (emulated) with recurrent_scale: forward, backward and
    forward-mode tangents as the CPU's, packed input, both directions."""
    emulated = pytest.importorskip("emulated")
    assert_layers_agree_with_options(lstm_ext.lstm_layer, emulated.lstm_layer, dtype)


def test_recurrent_dropout_refuses_onnx_export_in_training(tmp_path):
    module = lstm_ext.LSTM(3, 4, recurrent_dropout=0.5)
    with pytest.raises(RuntimeError, match="recurrent dropout in training mode has no ONNX"):
        torch.onnx.export(module, (torch.randn(2, 1, 3),), str(tmp_path / "m.onnx"),
                          dynamo=False, training=torch.onnx.TrainingMode.TRAINING)


def test_options_are_kept_by_copies_and_pickles_and_printed():
    options = dict(weight_drop=0.25, recurrent_dropout=0.5, zoneout_hidden=0.1,
                   zoneout_cell=0.125)
    module = lstm_ext.LSTM(3, 4, **options)
    assert ("weight_drop=0.25, recurrent_dropout=0.5, zoneout_hidden=0.1, zoneout_cell=0.125"
            in repr(module))
    assert "weight_drop" not in repr(lstm_ext.LSTM(3, 4))
    copy = pickle.loads(pickle.dumps(module))
    assert {name: getattr(copy, name) for name in options} == options
    state = module.__getstate__()
    for name in options:  # pickled before the options
        del state[name]
    old = lstm_ext.LSTM.__new__(lstm_ext.LSTM)
    old.__setstate__(state)
    assert all(getattr(old, name) == 0.0 for name in options)
    assert set(module.state_dict()) == set(lstm_ext.LSTM(3, 4).state_dict())


@pytest.mark.parametrize("name", ["weight_drop", "recurrent_dropout", "zoneout_hidden",
                                  "zoneout_cell"])
@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True, "0.5", None, float("nan")])
def test_bad_probabilities_raise_value_error(name, p):
    with pytest.raises(ValueError, match=f"{name} should be a number in range"):
        lstm_ext.LSTM(3, 4, **{name: p})
    x = torch.randn(2, 1, 3)
    with pytest.raises(ValueError, match=f"{name} should be a number in range"):
        lstm_ext.lstm(x, None, list(lstm_ext.LSTM(3, 4)._flat_weights), **{name: p})
