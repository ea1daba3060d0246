"""lstm_ext.LSTM's zoneout (zoneout_hidden, zoneout_cell) against the plain
loop of cells in tests/variant_reference.py, in every module configuration,
and lstm_layer's explicit form (zoneout_hidden, zoneout_cell tensors).

The random weights d are drawn again from the same seed as lstm_ext.lstm
draws them (zoneout_masks) and given to the reference; in eval d is p."""

import dataclasses

import pytest
import torch
from torch.func import grad, vmap
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

import lstm_ext
from compile_backend import BACKEND
from module_reference import ModuleCase, ModuleProblem
from reference import tolerance
from test_module_variants import CASES, assert_module_gradchecks, seeded, suffixes, variant
from variant_reference import (assert_close_to_reference, assert_layers_agree_with_options,
                               cell, reference_run)

P_H, P_C = 0.3, 0.4


def zoneout_masks(case: ModuleCase, problem: ModuleProblem, p_h: float, p_c: float,
                  seed: int = 3, weight_drop: float = 0.0, recurrent_dropout: float = 0.0):
    """The weights d lstm_ext.lstm draws after `seed` (after weight drop's
    masks and recurrent dropout's, when given: returned too), by suffix,
    time-major (T, B, *) in the input's sequence order, for reference_lstm;
    0 for an option that is off."""
    D, P = (2 if case.bidirectional else 1), case.proj or case.H
    groups = case.layers * D
    input = problem.inputs()[3]
    packed = isinstance(input, PackedSequence)
    B = 1 if case.input == "unbatched" else case.B
    rows = input.data.shape[0] if packed else case.T * B
    w_shapes = {s: getattr(variant(case), "weight_hh" + s).shape for s in suffixes(case)}
    torch.manual_seed(seed)  # after variant(), which seeds too
    w_masks, scales = {}, {}
    if weight_drop:
        for s, shape in w_shapes.items():
            w_masks[s] = torch.rand(shape).ge_(weight_drop).double()
    if recurrent_dropout:
        m = torch.rand(groups, B, P).ge_(recurrent_dropout).double() / (1 - recurrent_dropout)
        if packed and input.unsorted_indices is not None:
            m = m.index_select(1, input.unsorted_indices)
        scales = dict(zip(suffixes(case), m))
    drawn = [torch.rand(groups, rows, width).lt_(p).double() if p else None
             for p, width in ((p_h, P), (p_c, case.H))]

    def time_major(m):
        if packed:
            return pad_packed_sequence(PackedSequence(m, *input[1:]))[0]
        return m.view(case.T, B, -1)

    zoneout = {s: tuple(0 if m is None else time_major(m[k]) for m in drawn)
               for k, s in enumerate(suffixes(case))}
    return zoneout, w_masks, scales


def check_masks_are_mixed(zoneout):
    """Enough weights to hold both 0 and 1 do (the test could not fail otherwise)."""
    for pair in zoneout.values():
        for m in pair:
            if isinstance(m, torch.Tensor) and m.numel() >= 30:
                assert 0 < m.mean() < 1


@pytest.mark.parametrize("case", CASES, ids=str)
def test_zoneout_training_matches_the_cell_loop(case):
    """Training: h_t = d ⊙ h_{t-1} + (1 - d) ⊙ h̃_t and c_t likewise, d drawn
    per step, sequence and unit for each layer and direction."""
    problem = ModuleProblem(case)
    ours = seeded(problem, variant(case, zoneout_hidden=P_H, zoneout_cell=P_C))
    zoneout, _, _ = zoneout_masks(case, problem, P_H, P_C)
    check_masks_are_mixed(zoneout)
    ref = reference_run(problem, variant(case), {}, 0.0, zoneout=zoneout)
    assert_close_to_reference(ours, ref, **tolerance(case.dtype))


@pytest.mark.parametrize("p_h, p_c", [(0.5, 0.0), (0.0, 0.5)])
@pytest.mark.parametrize("case", CASES[::5], ids=str)
def test_zoneout_of_h_or_c_alone(case, p_h, p_c):
    problem = ModuleProblem(case)
    ours = seeded(problem, variant(case, zoneout_hidden=p_h, zoneout_cell=p_c))
    zoneout, _, _ = zoneout_masks(case, problem, p_h, p_c)
    ref = reference_run(problem, variant(case), {}, 0.0, zoneout=zoneout)
    assert_close_to_reference(ours, ref, **tolerance(case.dtype))


@pytest.mark.parametrize("case", CASES[::3], ids=str)
def test_zoneout_in_eval_is_the_expectation(case):
    """Eval: d = p everywhere; without grad, the inference op with the kept
    layout gives the same."""
    module = variant(case, zoneout_hidden=P_H, zoneout_cell=P_C).eval()
    problem = ModuleProblem(case)
    ours = problem.run(module)
    zoneout = {s: (P_H, P_C) for s in suffixes(case)}
    assert_close_to_reference(ours, reference_run(problem, module, {}, 0.0, zoneout=zoneout),
                              **tolerance(case.dtype))
    _, h0, c0, input = problem.inputs()
    with torch.no_grad():
        out, (h_n, c_n) = module(input, (h0, c0) if case.hx else None)
    assert module.layout_cache_bytes() > 0
    y = out.data if isinstance(out, PackedSequence) else out
    for a, b in ((y, ours.y), (h_n, ours.h_n), (c_n, ours.c_n)):
        torch.testing.assert_close(a, b.detach(), **tolerance(case.dtype))


@pytest.mark.parametrize("case", [ModuleCase(layers=2, bidirectional=True, proj=3,
                                             input="packed"),
                                  ModuleCase(H=70, B=5, dtype=torch.float32)], ids=str)
def test_zoneout_without_grad_in_training_draws_the_same_weights(case):
    """Training mode without grad (the inference op): the same seed, the same
    d and results as with grad; repeated seeded runs are bitwise equal, a new
    seed differs."""
    module = variant(case, zoneout_hidden=P_H, zoneout_cell=P_C)
    problem = ModuleProblem(case)
    _, h0, c0, input = problem.inputs()
    hx = (h0.detach(), c0.detach())

    def run(seed, grad):
        torch.manual_seed(seed)
        with torch.set_grad_enabled(grad):
            out, (h, c) = module(input, hx)
        return (out.data if isinstance(out, PackedSequence) else out), h, c
    with_grad, without, again, other = run(0, True), run(0, False), run(0, False), run(1, False)
    for a, b, c in zip(with_grad, without, again):
        torch.testing.assert_close(b, a.detach(), **tolerance(case.dtype))
        assert torch.equal(b, c)
    assert not torch.equal(without[0], other[0])


@pytest.mark.parametrize("case", [ModuleCase(layers=2, bidirectional=True, proj=3, T=3, B=2,
                                             H=4, I=3),
                                  ModuleCase(input="packed", T=3, B=3, H=3, I=2)], ids=str)
def test_zoneout_gradcheck_and_gradgradcheck(case):
    """Every input and parameter, one set of weights d (the seed is set each
    call); forward mode and second derivatives come from the composite."""
    assert_module_gradchecks(variant(case, zoneout_hidden=0.5, zoneout_cell=0.5), case)


def test_zoneout_compile_fullgraph():
    """One graph each. Training: under aot_eager (Dynamo, AOTAutograd and
    lstm_ext's fake and autograd rules; Inductor may reorder random draws)
    the compiled module draws eager's weights d and matches the cell loop.
    Eval, and lstm_layer's explicit form with its gradients: the test's
    backend."""
    case = ModuleCase(layers=2, bidirectional=True, dtype=torch.float32)
    module = variant(case, zoneout_hidden=P_H, zoneout_cell=P_C)
    problem = ModuleProblem(case)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):  # see test_compile.py
        out = seeded(problem, torch.compile(module, fullgraph=True, backend="aot_eager"))
        out.grads = {k.removeprefix("_orig_mod."): g for k, g in out.grads.items()}
        zoneout, _, _ = zoneout_masks(case, problem, P_H, P_C)
        ref = reference_run(problem, variant(case), {}, 0.0, zoneout=zoneout)
        assert_close_to_reference(out, ref, **tolerance(case.dtype))
        module.eval()
        _, h0, c0, input = problem.inputs()
        y = torch.compile(module, fullgraph=True, backend=BACKEND)(input, (h0, c0))[0]
    eval_ref = reference_run(problem, module, {}, 0.0,
                             zoneout={s: (P_H, P_C) for s in suffixes(case)})
    torch.testing.assert_close(y.double(), eval_ref.y, **tolerance(case.dtype))

    x, h0, c0, w_ih, w_hh, b, _, d_c, d_h = layer_problem(torch.float32)

    def fn(x, w_hh):
        y, (h, c) = lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, b, zoneout_cell=d_c,
                                        zoneout_hidden=d_h)
        return y.sin().sum() + h.sum() + c.square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend=BACKEND)
    results = []
    for run in (fn, compiled):
        leaves = [t.clone().requires_grad_() for t in (x, w_hh)]
        loss = run(*leaves)
        results.append((loss, *torch.autograd.grad(loss, leaves)))
    for a, r in zip(*results):
        torch.testing.assert_close(a, r)


def test_zoneout_combines_with_the_other_options_and_dropout():
    """Weight drop, recurrent dropout and zoneout together against the cell
    loop (every mask drawn again from the seed); with dropout between layers
    too, seeded runs repeat."""
    case = ModuleCase(layers=2, bidirectional=True, proj=3, input="packed")
    problem = ModuleProblem(case)
    options = dict(weight_drop=0.5, recurrent_dropout=0.3)
    ours = seeded(problem, variant(case, zoneout_hidden=P_H, zoneout_cell=P_C, **options))
    zoneout, w_masks, scales = zoneout_masks(case, problem, P_H, P_C, **options)
    check_masks_are_mixed(zoneout)
    ref = reference_run(problem, variant(case), w_masks, 0.5, scales, zoneout)
    assert_close_to_reference(ours, ref, **tolerance(case.dtype))
    dropping = dataclasses.replace(case, layers=3, dropout=0.5)
    module = variant(dropping, zoneout_hidden=P_H, zoneout_cell=P_C, **options)
    problem = ModuleProblem(dropping)
    first, again = seeded(problem, module), seeded(problem, module)
    assert torch.equal(first.y, again.y)
    assert all(torch.equal(first.grads[k], again.grads[k]) for k in first.grads)


def layer_problem(dtype=torch.float64, proj=0):
    gen = torch.Generator().manual_seed(0)
    T, B, I, H = 4, 3, 3, 5
    P = proj or H
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    h0, c0 = torch.randn(B, P, generator=gen, dtype=dtype), torch.randn(B, H, generator=gen,
                                                                         dtype=dtype)
    w_ih, w_hh = (torch.randn(4 * H, k, generator=gen, dtype=dtype) for k in (I, P))
    b = torch.randn(4 * H, generator=gen, dtype=dtype)
    w_hr = torch.randn(P, H, generator=gen, dtype=dtype) if proj else None
    d_c = torch.randint(0, 2, (T, B, H), generator=gen).to(dtype)
    d_h = torch.randint(0, 2, (T, B, P), generator=gen).to(dtype)
    return x, h0, c0, w_ih, w_hh, b, w_hr, d_c, d_h


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
def test_layer_explicit_form_matches_the_cell_loop(reverse, proj):
    """lstm_layer's zoneout_cell and zoneout_hidden (padded (T, B, *)), any
    weights in [0, 1] (here 0, 1 and 0.25), against the cell loop, values and
    gradients."""
    x, h0, c0, w_ih, w_hh, b, w_hr, d_c, d_h = layer_problem(proj=proj)
    d_h[0] = 0.25
    leaves = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b)]
    lx, lh0, lc0, lw_ih, lw_hh, lb = leaves
    y, (h_n, c_n) = lstm_ext.lstm_layer(lx, (lh0, lc0), lw_ih, lw_hh, lb, None, w_hr,
                                        reverse=reverse, zoneout_cell=d_c, zoneout_hidden=d_h)
    ref_leaves = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b)]
    rx, rh0, rc0, rw_ih, rw_hh, rb = ref_leaves
    ys, hs, cs = [], [], []
    for s in range(x.shape[1]):
        h, c, out = rh0[s], rc0[s], {}
        for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
            h, c = cell(rx[t, s], h, c, rw_ih, rw_hh, rb, w_hr, 1, d_h[t, s], d_c[t, s])
            out[t] = h
        ys.append(torch.stack([out[t] for t in range(x.shape[0])]))
        hs.append(h)
        cs.append(c)
    ref = (torch.stack(ys, 1), torch.stack(hs), torch.stack(cs))
    for a, r in zip((y, h_n, c_n), ref):
        torch.testing.assert_close(a, r)
    def loss(outs):
        return sum((o.sin() * (k + 1)).sum() for k, o in enumerate(outs))
    for a, r in zip(torch.autograd.grad(loss((y, h_n, c_n)), leaves),
                    torch.autograd.grad(loss(ref), ref_leaves)):
        torch.testing.assert_close(a, r)


def test_layer_zoneout_under_vmap_folds_into_the_batch():
    """Per-problem zoneout weights under vmap(grad) (folded into the batch
    like the rows of x) equal a loop of problems."""
    gen = torch.Generator().manual_seed(0)
    n, T, B, I, H = 3, 4, 2, 3, 5
    x = torch.randn(n, T, B, I, generator=gen, dtype=torch.float64)
    h0, c0 = (torch.randn(n, B, H, generator=gen, dtype=torch.float64) for _ in range(2))
    d_c, d_h = (torch.randint(0, 2, (n, T, B, H), generator=gen).double() for _ in range(2))
    w_ih, w_hh = (torch.randn(4 * H, k, generator=gen, dtype=torch.float64) for k in (I, H))

    def loss(w_hh, x, h0, c0, d_c, d_h):
        y, (h, c) = lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, zoneout_cell=d_c,
                                        zoneout_hidden=d_h)
        return y.sin().sum() + h.sum() + c.square().sum()
    mapped = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0, 0))(w_hh, x, h0, c0, d_c, d_h)
    for k in range(n):
        torch.testing.assert_close(mapped[k], grad(loss)(w_hh, x[k], h0[k], c0[k], d_c[k],
                                                         d_h[k]))

    # Jacobians by forward mode (the composite's tangents) under vmap.
    def last_h(x, h0, d_c, d_h):
        return lstm_ext.lstm_layer(x, (h0, c0[0]), w_ih, w_hh, zoneout_cell=d_c,
                                   zoneout_hidden=d_h)[1][0]
    jacobians = vmap(torch.func.jacfwd(last_h))(x, h0, d_c, d_h)
    for k in range(n):
        torch.testing.assert_close(jacobians[k],
                                   torch.func.jacrev(last_h)(x[k], h0[k], d_c[k], d_h[k]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zoneout_on_the_emulated_cuda_op(dtype):
    emulated = pytest.importorskip("emulated")
    assert_layers_agree_with_options(lstm_ext.lstm_layer, emulated.lstm_layer, dtype,
                                     zoneout=True)


def test_forward_mode_with_one_tensor_in_two_places():
    """Forward-mode AD (the composite's tangents by reverse mode) when b_ih is
    b_hh and requires grad: each place's tangent counts once."""
    x, h0, c0, w_ih, w_hh, b, _, d_c, d_h = layer_problem()
    t_b = torch.randn_like(b)

    def run(b_ih, b_hh):
        return lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, zoneout_cell=d_c,
                                   zoneout_hidden=d_h)[0]
    expected = torch.func.jvp(run, (b, b.clone()), (t_b, t_b))[1]
    with torch.autograd.forward_ad.dual_level():
        shared = torch.autograd.forward_ad.make_dual(b.clone().requires_grad_(), t_b)
        tangent = torch.autograd.forward_ad.unpack_dual(run(shared, shared)).tangent
    torch.testing.assert_close(tangent, expected)


def test_zoneout_weights_are_constants_and_checked():
    x, w_ih, w_hh = torch.randn(3, 2, 4), torch.randn(20, 4), torch.randn(20, 5)
    with pytest.raises(RuntimeError, match="zoneout_cell is a constant"):
        lstm_ext.lstm_layer(x, None, w_ih, w_hh, zoneout_cell=torch.ones(3, 2, 5,
                                                                        requires_grad=True))
    with pytest.raises(RuntimeError, match=r"zoneout_h must have shape \[6, 5\]"):
        lstm_ext.lstm_layer(x, None, w_ih, w_hh, zoneout_hidden=torch.ones(3, 2, 4))
    with pytest.raises(RuntimeError, match=r"zoneout_c must have shape \[6, 5\]"):
        lstm_ext.lstm_layer(x, None, w_ih, w_hh, zoneout_cell=torch.ones(6, 4))


@pytest.mark.parametrize("train", [True, False])
def test_zoneout_refuses_onnx_export(tmp_path, train):
    module = lstm_ext.LSTM(3, 4, zoneout_hidden=0.1).train(train)
    mode = torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL
    with pytest.raises(RuntimeError, match="zoneout has no ONNX form"):
        torch.onnx.export(module, (torch.randn(2, 1, 3),), str(tmp_path / "m.onnx"),
                          dynamo=False, training=mode)
