"""Every autograd mode through one fused layer (the op and lstm_ext.lstm_layer):
forward-mode AD, torch.func's transforms, vmap, per-sample gradients, and the
errors where a mode cannot be served. Module-level modes are in
test_module_autograd_modes.py.

Tangents are compared with nn.LSTM's and with central finite differences
(float64, 1e-8); the fast routes are checked to be the ones taken."""

import dataclasses

import pytest
import torch
from torch.autograd import forward_ad

import emulated
import lstm_ext
from autograd_modes import central_differences, fused_only, no_vmap_loops
from lstm_ext import _ops
from reference import Case, Problem

CASES = [
    Case(),
    Case(bias=False, reverse=True),
    Case(proj=3),
    Case(T=7, B=5, I=3, H=9, packed=True, reverse=True, proj=4),
    Case(T=6, B=4, packed=True, bias=False),
    Case(T=1, B=1, I=2, H=1),
]
TOL = dict(rtol=1e-8, atol=1e-8)


def primals_and_tangents(problem, seed=1):
    gen = torch.Generator().manual_seed(seed)
    primals = [leaf.detach() for leaf in problem.leaves()]
    tangents = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in primals)
    return tuple(primals), tangents


def torch_jvp(fn, primals, tangents):
    """nn.LSTM's tangents by the double-vjp trick: nn.LSTM has no forward-mode
    derivative for packed input, and its reverse mode differentiates twice."""
    return torch.autograd.functional.jvp(fn, primals, tangents)[1]


def assert_all_close(ours, theirs, **tol):
    for name, a, b in zip(("y", "h_n", "c_n"), ours, theirs):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_jvp_matches_nn_lstm_and_finite_differences(case):
    problem = Problem(case)
    primals, tangents = primals_and_tangents(problem)
    with fused_only():
        out, ours = torch.func.jvp(problem.ours_fn(), primals, tangents)
    theirs = torch_jvp(problem.torch_fn(), primals, tangents)
    assert_all_close(ours, theirs, **TOL)
    assert_all_close(ours, central_differences(problem.ours_fn(), primals, tangents), **TOL)
    assert_all_close(out, problem.torch_fn()(*primals), **TOL)


INPUT_NAMES = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]


@pytest.mark.parametrize("which", range(len(INPUT_NAMES)), ids=INPUT_NAMES)
def test_jvp_of_each_input_alone(which):
    """A tangent on one input, the others' None: each term of the tangent recurrence."""
    problem = Problem(Case(T=6, B=4, packed=True, reverse=True, proj=3))
    primals, tangents = primals_and_tangents(problem)

    def fn(value, make):
        args = list(primals)
        args[which] = value
        return make()(*args)

    with fused_only():
        _, ours = torch.func.jvp(lambda v: fn(v, problem.ours_fn), (primals[which],),
                                 (tangents[which],))
    theirs = torch_jvp(lambda v: fn(v, problem.torch_fn), primals[which], tangents[which])
    assert_all_close(ours, theirs, **TOL)


@pytest.mark.parametrize("case", [Case(proj=3), Case(T=7, B=5, packed=True, reverse=True, proj=2)],
                         ids=str)
def test_forward_ad_dual_numbers(case):
    """torch.autograd.forward_ad, leaves that require grad (parameters do): the
    tangents are fused, and autograd differentiates them (reverse over forward)."""
    problem = Problem(case)
    primals, tangents = primals_and_tangents(problem)
    results = []
    for make in (problem.ours_fn, problem.torch_fn):
        leaves = [p.clone().requires_grad_() for p in primals]
        with forward_ad.dual_level():
            outputs = make()(*(forward_ad.make_dual(p, t) for p, t in zip(leaves, tangents)))
            duals = [forward_ad.unpack_dual(o).tangent for o in outputs]
        weights = torch.linspace(-1, 1, sum(d.numel() for d in duals), dtype=torch.float64)
        loss = (torch.cat([d.flatten() for d in duals]) * weights).sum()
        results.append((*duals, *torch.autograd.grad(loss, leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


def test_emulated_cuda_tangents_match_cpu_op():
    """The tangent op's CUDA kernel and executor, emulated on the CPU."""
    for case in (Case(T=7, B=5, I=3, H=9, packed=True, reverse=True, proj=4),
                 Case(T=3, B=9, I=5, H=67, packed=True), Case(bias=False)):
        problem = Problem(case)
        primals, tangents = primals_and_tangents(problem)
        with fused_only():
            _, ours = torch.func.jvp(problem.ours_fn(emulated.lstm_layer), primals, tangents)
            _, cpu = torch.func.jvp(problem.ours_fn(), primals, tangents)
        assert_all_close(ours, cpu, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [Case(T=4, B=2, I=2, H=3, proj=2, reverse=True),
                                  Case(T=4, B=3, I=2, H=3, packed=True)], ids=str)
def test_jacobians_and_hessian_match_nn_lstm(case):
    problem = Problem(case)
    primals, _ = primals_and_tangents(problem)
    gen = torch.Generator().manual_seed(2)
    dy, dh = torch.randn(problem.dy.shape, generator=gen, dtype=torch.float64), problem.dh

    def loss_of(make):
        def loss(x, w_hh):
            args = list(primals)
            args[0], args[4] = x, w_hh
            y, h_n, c_n = make()(*args)
            return (y.tanh() * dy).sum() + (h_n * dh).sum() + c_n.square().sum()

        return loss

    def outputs_of(make):
        return lambda x: make()(x, *primals[1:])

    x, w_hh = primals[0], primals[4]
    # nn.LSTM's through autograd.functional (reverse mode, twice where needed):
    # torch.func's transforms do not run it on packed input.
    theirs = torch.autograd.functional.jacobian(outputs_of(problem.torch_fn), x)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        assert_all_close(transform(outputs_of(problem.ours_fn))(x), theirs, **TOL)
    theirs = torch.autograd.functional.hessian(loss_of(problem.torch_fn), (x, w_hh))
    jacrev, jacfwd = torch.func.jacrev, torch.func.jacfwd
    for name, transform in [
        ("hessian", torch.func.hessian),
        ("jacrev(jacrev)", lambda f, argnums: jacrev(jacrev(f, argnums), argnums)),
        ("jacrev(jacfwd)", lambda f, argnums: jacrev(jacfwd(f, argnums), argnums)),
    ]:
        ours = transform(loss_of(problem.ours_fn), argnums=(0, 1))(x, w_hh)
        for a, b in zip(torch.utils._pytree.tree_leaves(ours),
                        torch.utils._pytree.tree_leaves(theirs)):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_grad_and_vjp_stay_fused_and_match_nn_lstm():
    problem = Problem(Case(T=6, B=4, packed=True, proj=3))
    primals, tangents = primals_and_tangents(problem)
    with fused_only():
        _, pullback = torch.func.vjp(problem.ours_fn(), *primals)
        ours = pullback((problem.dy, problem.dh, problem.dc))
        g_ours = torch.func.grad(lambda *a: problem.ours_fn()(*a)[0].sin().sum(),
                                 argnums=tuple(range(len(primals))))(*primals)
    # nn.LSTM's by autograd: torch.func's transforms do not run it on packed input.
    theirs = torch.autograd.functional.vjp(problem.torch_fn(), primals,
                                           (problem.dy, problem.dh, problem.dc))[1]
    g_theirs = torch.autograd.functional.vjp(
        lambda *a: problem.torch_fn()(*a)[0].sin().sum(), primals)[1]
    for a, b in zip((*ours, *g_ours), (*theirs, *g_theirs)):
        torch.testing.assert_close(a, b, **TOL)


def _packed_layer_args(n, mapped_weights=False, seed=0):
    """lstm_layer's arguments on packed input, n of each mapped one stacked first."""
    gen = torch.Generator().manual_seed(seed)
    batch_sizes = torch.tensor([4, 4, 3, 1])
    rows, I, H, P = int(batch_sizes.sum()), 3, 5, 2

    def t(*shape, mapped=True):
        return torch.randn(*((n,) if mapped else ()), *shape, generator=gen, dtype=torch.float64)

    weights = [t(4 * H, I, mapped=mapped_weights), t(4 * H, P, mapped=mapped_weights),
               t(4 * H, mapped=mapped_weights), t(4 * H, mapped=mapped_weights),
               t(P, H, mapped=mapped_weights)]
    return [t(rows, I), t(4, P), t(4, H), *weights], batch_sizes


def _layer(batch_sizes):
    def run(x, h0, c0, *weights):
        y, (h_n, c_n) = lstm_ext.lstm_layer(x, (h0, c0), *weights, batch_sizes=batch_sizes,
                                            reverse=True)
        return y, h_n, c_n

    return run


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (0, None, None), (None, 1, 1)])
def test_vmap_over_inputs_and_states_folds_into_one_call(in_dims):
    args, batch_sizes = _packed_layer_args(3)
    if in_dims[0] is None:
        args[0] = args[0][0]
    for i in (1, 2):
        if in_dims[i] is None:
            args[i] = args[i][0]
        elif in_dims[i] == 1:
            args[i] = args[i].movedim(0, 1)
    run = _layer(batch_sizes)
    with no_vmap_loops(), fused_only():
        mapped = torch.func.vmap(run, in_dims=(*in_dims, *(None,) * 5))(*args)

    def select(k):
        return [a if d is None else a.select(d, k) for a, d in zip(args, (*in_dims, *(None,) * 5))]

    for k in range(3):
        assert_all_close([m[k] for m in mapped], run(*select(k)), rtol=1e-12, atol=1e-12)


def test_vmap_over_weights_runs_per_weight_set():
    args, batch_sizes = _packed_layer_args(3, mapped_weights=True)
    run = _layer(batch_sizes)
    mapped = torch.func.vmap(run)(*args)
    for k in range(3):
        assert_all_close([m[k] for m in mapped], run(*(a[k] for a in args)),
                         rtol=1e-12, atol=1e-12)


def test_per_sample_gradients_in_one_pass():
    """vmap(grad) over the batch: every weight's gradient per sample, from one
    backward call on the folded batch (no loop, nothing recomputed)."""
    args, batch_sizes = _packed_layer_args(6)
    run = _layer(batch_sizes)

    def loss(weights, x, h0, c0):
        y, h_n, c_n = run(x, h0, c0, *weights)
        return y.sin().sum() + h_n.square().sum() + c_n.sum()

    weights, per_sample_inputs = args[3:], args[:3]
    with no_vmap_loops(), fused_only():
        grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0))(
            weights, *per_sample_inputs)
    for k in range(6):
        expected = torch.func.grad(loss)(weights, *(a[k] for a in per_sample_inputs))
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a[k], b, rtol=1e-12, atol=1e-12)


def test_batched_cotangents_fold_into_one_backward():
    """jacrev's vmap over cotangents: one backward, per-cotangent weight gradients."""
    args, batch_sizes = _packed_layer_args(1)
    args = [a[0] if i < 3 else a for i, a in enumerate(args)]
    run = _layer(batch_sizes)
    with no_vmap_loops(), fused_only():
        jac = torch.func.jacrev(lambda w_hh: run(*args[:4], w_hh, *args[5:])[1])(args[4])
    expected = torch.autograd.functional.jacobian(
        lambda w_hh: run(*args[:4], w_hh, *args[5:])[1], args[4])
    torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-12)


def test_vmap_over_batch_sizes_raises():
    args, batch_sizes = _packed_layer_args(2)
    with pytest.raises(ValueError, match="vmap over batch_sizes is not supported"):
        torch.func.vmap(lambda bs: _layer(bs)(*(a[0] for a in args[:3]), *args[3:]))(
            torch.stack([batch_sizes, batch_sizes]))


def _op_args():
    args, batch_sizes = _packed_layer_args(1)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = (a[0] if i < 3 else a for i, a in enumerate(args))
    return [x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, False]


def test_raw_op_under_grad_transform_raises():
    """The op reached from below the dispatcher cannot see torch.func's levels:
    it refuses rather than return a gradient of zero."""
    args = _op_args()

    def f(x):
        return _ops.lstm_layer(x, *args[1:])[0].sum()

    with pytest.raises(RuntimeError, match="under a torch.func grad or jvp transform"):
        torch.func.grad(f)(args[0])
    with pytest.raises(RuntimeError, match="under a torch.func grad or jvp transform"):
        torch.func.jvp(f, (args[0],), (torch.ones_like(args[0]),))
    # vmap alone has nothing to lose: the op's batching rule serves it.
    torch.func.vmap(lambda x: _ops.lstm_layer(x, *args[1:])[0])(args[0].unsqueeze(0))


def test_backward_and_tangent_ops_refuse_to_be_differentiated():
    args = _op_args()
    y, h_n, c_n, gates, cells = _ops.lstm_layer(*args)
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, reverse = args
    saved = (x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells)
    dy = torch.randn_like(y, requires_grad=True)
    with pytest.raises(RuntimeError, match="lstm_layer_backward has no derivative"):
        _ops.lstm_layer_backward(dy, None, None, *saved, reverse, [True] * 4)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match="lstm_layer_jvp has no derivative"):
            _ops.lstm_layer_jvp(dual, *saved[1:], reverse, x, *(None,) * 6)
    # Nothing to differentiate: both run.
    _ops.lstm_layer_backward(dy.detach(), None, None, *saved, reverse, [True] * 4)
    _ops.lstm_layer_jvp(*saved, reverse, x, *(None,) * 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_jvp_in_other_dtypes(dtype):
    """float32 computes tangents in float32, bfloat16 and float16 in float32
    inside (as the layer): against float64 tangents of the same (rounded)
    values."""
    case = dataclasses.replace(Case(T=6, B=4, packed=True, proj=3), dtype=torch.float64)
    problem = Problem(case)
    primals, tangents = primals_and_tangents(problem)
    primals = tuple(p.to(dtype).double() for p in primals)
    tangents = tuple(t.to(dtype).double() for t in tangents)
    _, exact = torch.func.jvp(problem.ours_fn(), primals, tangents)
    with fused_only():
        _, low = torch.func.jvp(problem.ours_fn(), tuple(p.to(dtype) for p in primals),
                                tuple(t.to(dtype) for t in tangents))
    tol = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=5e-3, atol=5e-3),
           torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}[dtype]
    for a, b in zip(low, exact):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **tol)
