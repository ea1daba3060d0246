"""lstm_ext.LSTM's layer_norm against the plain loop of cells in
tests/variant_reference.py, in every module configuration, and the op's
LayerNorm against the composite layer (every dtype and path, both thread
splits, the emulated CUDA kernels)."""

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import PackedSequence

import lstm_ext
from compile_backend import BACKEND
from cpu_split import SEQUENCES, UNITS, cpu_split
from lstm_ext import _composite, _ops
from module_reference import ModuleCase, ModuleProblem, twins
from reference import tolerance
from test_module_variants import CASES, assert_module_gradchecks, seeded, suffixes
from test_module_zoneout import P_C, P_H, zoneout_masks
from variant_reference import (assert_close_as_a_float32_loop, assert_close_to_reference,
                               reference_run)


def ln_tolerance(dtype):
    """Normalising divides by the rows' spread: float32 loses a few more bits."""
    return tolerance(dtype) if dtype == torch.float64 else dict(rtol=5e-4, atol=5e-4)


def assert_matches_the_loop(ours, problem: ModuleProblem, module, **options):
    """`ours` against the float64 loop of cells (reference_run's `options`);
    float32 also as close as the same loop run in float32 gets: with few units
    (H = 6) some rows' spread is small enough to amplify any float32 rounding
    past 5e-4 (the float32 loop itself goes past it on
    L2-padded-float32-bi-P3-hx, and ours did on the AVX2 level)."""
    ref = reference_run(problem, module, {}, 0.0, **options)
    dtype = problem.case.dtype
    if dtype == torch.float64:
        assert_close_to_reference(ours, ref, **ln_tolerance(dtype))
    else:
        loop = reference_run(problem, module, {}, 0.0, dtype=dtype, **options)
        assert_close_as_a_float32_loop(ours, ref, loop, **ln_tolerance(dtype))


def layer_norm_variant(case: ModuleCase, **options):
    """lstm_ext.LSTM(layer_norm=True, **options) holding twins(case)'s
    weights, and LayerNorm parameters other than their initial ones (so that
    a mix-up between them shows)."""
    _, plain = twins(case, torch.float64)
    module = lstm_ext.LSTM(**case.kwargs(), layer_norm=True, **options, dtype=torch.float64)
    module.load_state_dict(plain.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3
                        + (0.0 if name.startswith("ln_c_bias") else 1.0))
    return module.to(case.dtype)


# Plus the compile test's configuration (CASES has two layers batch-first only).
@pytest.mark.parametrize("case", CASES + [ModuleCase(layers=2, bidirectional=True, proj=3,
                                                     dtype=torch.float32)], ids=str)
def test_layer_norm_matches_the_cell_loop(case):
    module = layer_norm_variant(case)
    problem = ModuleProblem(case)
    ours = problem.run(module)
    assert {k for k in ours.grads if k.startswith("ln_")} == {
        name + s for s in suffixes(case)
        for name in ("ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")}
    assert_matches_the_loop(ours, problem, module)


@pytest.mark.parametrize("case", CASES[::4], ids=str)
def test_layer_norm_with_zoneout_matches_the_cell_loop(case):
    problem = ModuleProblem(case)
    module = layer_norm_variant(case, zoneout_hidden=P_H, zoneout_cell=P_C)
    ours = seeded(problem, module)
    zoneout, _, _ = zoneout_masks(case, problem, P_H, P_C)
    assert_matches_the_loop(ours, problem, module, zoneout=zoneout)


@pytest.mark.parametrize("grad", [True, False])
def test_layer_norm_h_is_accurate_near_zero(grad):
    """h = σ(o)·tanh(LN(c̃) γ_c + β_c) with tanh's argument near 0 (γ_c =
    1e-4, β_c = 0, so h is about 5e-5): float32 h within 5e-5 of float64's,
    relatively, or 1e-9 absolutely (where c̃ is near its row's mean). The
    plain cell pass's one-exp tanh errs there by about 6e-8 absolutely, 6e-4
    relatively, which the next layer's LayerNorm would amplify (it divides
    by its rows' spread)."""
    torch.manual_seed(0)
    module = lstm_ext.LSTM(8, 32, layer_norm=True)
    with torch.no_grad():
        module.ln_c_weight_l0.fill_(1e-4)
    x = torch.randn(5, 3, 8)
    with torch.set_grad_enabled(grad):
        y = module(x)[0]
        exact = module.double()(x.double())[0]
    torch.testing.assert_close(y.double(), exact, rtol=5e-5, atol=1e-9)


def test_layer_norm_parameters():
    """Named per layer and direction, of 4H, 4H, H, H values, initialised as
    the identity (also by reset_parameters), in the state dict; the rest is
    nn.LSTM's."""
    module = lstm_ext.LSTM(3, 5, num_layers=2, bidirectional=True, layer_norm=True)
    names = dict(module.named_parameters())
    for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert names["ln_ih_weight" + s].shape == names["ln_hh_weight" + s].shape == (20,)
        assert names["ln_c_weight" + s].shape == names["ln_c_bias" + s].shape == (5,)
    module.reset_parameters()
    for name, p in names.items():
        if name.startswith("ln_"):
            assert torch.equal(p, torch.full_like(p, 0.0 if "bias" in name else 1.0))
    plain = set(lstm_ext.LSTM(3, 5, num_layers=2, bidirectional=True).state_dict())
    assert plain < set(module.state_dict())
    assert "layer_norm=True" in repr(module)


@pytest.mark.parametrize("case", [ModuleCase(layers=1, bidirectional=True, proj=2, T=2, B=2,
                                             H=3, I=2),
                                  ModuleCase(input="packed", T=3, B=3, H=3, I=2)], ids=str)
def test_layer_norm_gradcheck_and_gradgradcheck(case):
    """Small: second derivatives go through the composite, column by column."""
    assert_module_gradchecks(layer_norm_variant(case), case)


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_layer_norm_must_be_a_bool(value):
    with pytest.raises(ValueError, match="layer_norm should be a bool"):
        lstm_ext.LSTM(3, 4, layer_norm=value)


@pytest.mark.parametrize("split", [SEQUENCES, UNITS], ids=["sequences", "units"])
@pytest.mark.parametrize("zoneout", [False, True])
@pytest.mark.parametrize("case", CASES[::2], ids=str)
def test_layer_norm_inference_op_matches_the_cell_loop(case, zoneout, split):
    """Without grad, the fused inference op's LayerNorm (both thread splits),
    eval zoneout too."""
    options = dict(zoneout_hidden=P_H, zoneout_cell=P_C) if zoneout else {}
    module = layer_norm_variant(case, **options).eval()
    problem = ModuleProblem(case)
    ref = reference_run(problem, module, {}, 0.0,
                        zoneout={s: (P_H, P_C) for s in suffixes(case)} if zoneout else None)
    _, h0, c0, input = problem.inputs()
    with torch.no_grad(), cpu_split(split):
        out, (h_n, c_n) = module(input, (h0, c0) if case.hx else None)
    y = out.data if isinstance(out, PackedSequence) else out
    for a, b in ((y, ref.y), (h_n, ref.h_n), (c_n, ref.c_n)):
        torch.testing.assert_close(a.double(), b.detach(), **ln_tolerance(case.dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layer_norm_on_the_emulated_cuda_op(dtype):
    pytest.importorskip("emulated")  # registers torch.ops.lstm_ext_emu
    gen = torch.Generator().manual_seed(3)
    batch_sizes = torch.tensor([3, 3, 2, 1])
    x = torch.randn(9, 4, generator=gen, dtype=dtype)
    h0, c0 = torch.randn(3, 5, generator=gen, dtype=dtype), torch.randn(3, 6, generator=gen,
                                                                         dtype=dtype)
    w_ih, w_hh = (torch.randn(24, k, generator=gen, dtype=dtype) for k in (4, 5))
    w_hr = torch.randn(5, 6, generator=gen, dtype=dtype)
    ln = [torch.randn(n, generator=gen, dtype=dtype) for n in (24, 24, 6, 6)]
    for reverse in (False, True):
        outs = [ops.lstm_layer_inference(x, batch_sizes, h0, c0, w_ih, w_hh, None, None, w_hr,
                                         reverse, None, None, None, None, None, None, None, *ln)
                for ops in (torch.ops.lstm_ext, torch.ops.lstm_ext_emu)]
        ref = _composite.layer(x, batch_sizes, h0, c0, w_ih, w_hh, None, None, w_hr, reverse,
                               None, None, None, *ln)
        for a, b, r in zip(*outs, ref):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("split", [SEQUENCES, UNITS], ids=["sequences", "units"])
@pytest.mark.parametrize("case", CASES[1::5], ids=str)
def test_layer_norm_training_in_both_thread_splits(case, split):
    module = layer_norm_variant(case, zoneout_hidden=P_H, zoneout_cell=P_C)
    problem = ModuleProblem(case)
    with cpu_split(split):
        ours = seeded(problem, module)
    zoneout, _, _ = zoneout_masks(case, problem, P_H, P_C)
    assert_matches_the_loop(ours, problem, module, zoneout=zoneout)


def op_problem(proj, reverse, H=130, seed=0):
    """The op's arguments with LayerNorm, zoneout and recurrent dropout (float64
    leaves; H = 130 cuts the units split in pieces and a partial group)."""
    gen = torch.Generator().manual_seed(seed)
    B, I, P = 5, 7, proj or H
    batch_sizes = torch.tensor([5, 5, 4, 2, 2, 1])
    rows = int(batch_sizes.sum())

    def randn(*shape, scale=0.5, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift)

    weights = [randn(rows, I), batch_sizes, randn(B, P), randn(B, H), randn(4 * H, I, scale=0.3),
               randn(4 * H, P, scale=0.3), randn(4 * H), randn(4 * H),
               randn(P, H, scale=0.3) if proj else None, reverse,
               (torch.rand(B, P, generator=gen) > 0.3).double() / 0.7,
               (torch.rand(rows, H, generator=gen) < 0.4).double(),
               (torch.rand(rows, P, generator=gen) < 0.4).double(),
               randn(4 * H, scale=0.3, shift=1.0), randn(4 * H, scale=0.3, shift=1.0),
               randn(H, scale=0.3, shift=1.0), randn(H, scale=0.3)]
    return weights


DIFFERENTIABLE = (0, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 16)


@pytest.mark.parametrize("namespace", ["lstm_ext", "lstm_ext_emu"])
@pytest.mark.parametrize("dtype, native, tol", [(torch.float64, True, 1e-12),
                                                (torch.float32, True, 5e-5),
                                                (torch.bfloat16, True, 0.1),
                                                (torch.bfloat16, False, 0.1)],
                         ids=["float64", "float32", "bfloat16", "bfloat16-upcast"])
@pytest.mark.parametrize("split", [SEQUENCES, UNITS], ids=["sequences", "units"])
@pytest.mark.parametrize("proj, reverse", [(0, False), (9, True)])
def test_op_matches_the_composite(namespace, dtype, native, tol, split, proj, reverse):
    """y, h_n, c_n and the gradient of every differentiable argument (LayerNorm's
    four too), relative to each result's largest value."""
    if namespace == "lstm_ext_emu":
        pytest.importorskip("emulated")
    ops = getattr(torch.ops, namespace)
    args = op_problem(proj, reverse)
    leaves = [a.clone().requires_grad_() if i in DIFFERENTIABLE and a is not None else a
              for i, a in enumerate(args)]
    ref = _composite.layer(*leaves)
    wanted = [a for i, a in enumerate(leaves) if i in DIFFERENTIABLE and a is not None]
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for r in ref]
    expected = (*ref, *torch.autograd.grad(ref, wanted, cotangents))
    ours_args = [a.detach().to(dtype).requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) and a.dtype == torch.float64 else a
                 for a in leaves]
    previous = torch.ops.lstm_ext._cpu_native_off(not native)
    try:
        with cpu_split(split):
            out = ops.lstm_layer(*ours_args)[:3]
            ours_wanted = [a for i, a in enumerate(ours_args) if i in DIFFERENTIABLE
                           and a is not None]
            got = (*out, *torch.autograd.grad(out, ours_wanted,
                                              [c.to(dtype) for c in cotangents]))
    finally:
        torch.ops.lstm_ext._cpu_native_off(previous)
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        error = (a.double() - b).abs().max() / b.abs().max()
        assert error < tol, f"result {k}: relative error {error:.2e}"


@pytest.mark.parametrize("which", ["plain", "zoneout"])
def test_opcheck_layer_norm(which):
    args = op_problem(9, True, H=6)
    if which == "plain":
        args[10:13] = [None, None, None]
    leaves = [a.requires_grad_() if i in DIFFERENTIABLE and a is not None else a
              for i, a in enumerate(args)]
    torch.library.opcheck(_ops.lstm_layer, leaves)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in leaves]
    torch.library.opcheck(_ops.lstm_layer_inference,
                          [*detached[:10], None, None, None, None, *detached[10:]])
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, reverse = detached[:10]
    y, _, c_n, gates, cells = _ops.lstm_layer(*detached)
    saved = (x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse)
    torch.library.opcheck(_ops.lstm_layer_backward, (
        torch.randn_like(y), None, torch.randn_like(c_n), *saved, [True] * 4, 1, detached[10],
        None, *detached[11:]))


def test_layer_norm_weights_are_checked():
    args = [a.detach() if isinstance(a, torch.Tensor) else a
            for a in op_problem(0, False, H=6)]
    with pytest.raises(RuntimeError, match="all four or none, got 3"):
        _ops.lstm_layer(*args[:16])
    with pytest.raises(RuntimeError, match=r"ln_hh must have shape \[24\]"):
        _ops.lstm_layer(*args[:14], args[15], *args[15:])
    with pytest.raises(RuntimeError, match="ln_c_bias has dtype Float"):
        _ops.lstm_layer(*args[:16], args[16].float())


def test_layer_norm_per_sample_gradients_under_vmap():
    """vmap(grad) folds the problems into the batch: the backward op's groups,
    LayerNorm's gradients per problem too, equal to a loop of problems."""
    case = ModuleCase(H=5, I=3, B=3, T=4)
    module = layer_norm_variant(case)
    params = {n: p.detach() for n, p in module.named_parameters()}
    x = ModuleProblem(case).x

    def loss(params, x):
        return functional_call(module, params, (x.unsqueeze(1),))[0].square().sum()
    per_sample = vmap(grad(loss), in_dims=(None, 1))(params, x)
    for b in range(case.B):
        one = grad(loss)(params, x[:, b])
        for name, g in one.items():
            torch.testing.assert_close(per_sample[name][b], g)


def test_layer_norm_compile_fullgraph():
    case = ModuleCase(layers=2, bidirectional=True, proj=3, dtype=torch.float32)
    module = layer_norm_variant(case)
    problem = ModuleProblem(case)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=BACKEND)
    with torch._dynamo.config.patch(allow_rnn=True):  # see test_compile.py
        out = problem.run(compiled)
    out.grads = {k.removeprefix("_orig_mod."): g for k, g in out.grads.items()}
    assert_matches_the_loop(out, problem, module)


def test_layer_norm_refuses_onnx_export(tmp_path):
    module = lstm_ext.LSTM(3, 4, layer_norm=True).eval()
    with pytest.raises(RuntimeError, match="LayerNorm has no ONNX form"):
        torch.onnx.export(module, (torch.randn(2, 1, 3),), str(tmp_path / "m.onnx"),
                          dynamo=False)
