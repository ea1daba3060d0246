"""Every autograd mode through lstm_ext.LSTM, against nn.LSTM or, where
nn.LSTM cannot (vmap, per-sample gradients), against a loop over samples of
our own module: forward-mode AD, torch.func's transforms, vmap, per-sample
gradients, and gradcheck/gradgradcheck with every flag."""

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import functional_call

from autograd_modes import fused_only, no_vmap_loops
from module_reference import ModuleCase, twins

TOL = dict(rtol=1e-8, atol=1e-8)
GRADCHECK_FLAGS = dict(check_batched_grad=True, check_forward_ad=True, check_backward_ad=True,
                       check_undefined_grad=True, check_batched_forward_grad=True)
GRADGRADCHECK_FLAGS = dict(check_batched_grad=True, check_fwd_over_rev=True,
                           check_rev_over_rev=True, check_undefined_grad=True)
CASE = ModuleCase(layers=2, bidirectional=True, proj=2, batch_first=True, T=4, B=3, I=3, H=4)


def _packing(lengths, T, B):
    """A PackedSequence of (T, B, *) padded input built by indexing (which
    every autograd mode differentiates): its data holds row indices."""
    rows = torch.arange(T * B, dtype=torch.float64).view(T, B, 1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(rows, lengths, enforce_sorted=False)
    return packed._replace(data=packed.data.view(-1).long())


def _module_fn(module, packing=None):
    """(x, h0, c0, *parameters) -> (output data, h_n, c_n); x is padded (T, B, I)
    when packing is given, else in the module's layout."""
    names = [n for n, _ in module.named_parameters()]

    def fn(x, h0, c0, *params):
        input = x if packing is None else packing._replace(data=x.flatten(0, 1)[packing.data])
        out, (h_n, c_n) = functional_call(module, dict(zip(names, params)), (input, (h0, c0)))
        return (out if packing is None else out.data), h_n, c_n

    return fn


def _primals(module, case, seed=0):
    gen = torch.Generator().manual_seed(seed)
    D, P = 2 if case.bidirectional else 1, case.proj or case.H
    x_shape = (case.B, case.T, case.I) if case.batch_first else (case.T, case.B, case.I)

    def t(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return (t(*x_shape), t(case.layers * D, case.B, P), t(case.layers * D, case.B, case.H),
            *(p.detach() for p in module.parameters()))


@pytest.mark.parametrize("packed", [False, True])
def test_jvp_matches_nn_lstm(packed):
    case = CASE if not packed else ModuleCase(layers=2, bidirectional=True, proj=2, T=4, B=3,
                                              I=3, H=4)
    ref, ours = twins(case)
    packing = _packing(torch.tensor([2, 4, 1]), case.T, case.B) if packed else None
    primals = _primals(ours, case)
    tangents = tuple(torch.randn_like(p) for p in primals)
    with fused_only():
        _, got = torch.func.jvp(_module_fn(ours, packing), primals, tangents)
    # nn.LSTM's by the double-vjp trick: it has no forward-mode rule for packed input.
    expected = torch.autograd.functional.jvp(_module_fn(ref, packing), primals, tangents)[1]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL)


def test_forward_ad_and_jacobians_of_the_module_itself():
    """As users write it: the module's own parameters (which require grad), no
    functional_call; forward_ad dual numbers, jacfwd, jacrev, hessian, grad, vjp."""
    ref, ours = twins(CASE)
    x = _primals(ours, CASE)[0]
    v = torch.randn_like(x)
    u = torch.randn_like(ours(x)[0])
    results = []
    for module in (ours, ref):
        with forward_ad.dual_level():
            tangent = forward_ad.unpack_dual(module(forward_ad.make_dual(x, v))[0]).tangent
        outputs = lambda x: module(x)[0]  # noqa: E731
        results.append([
            tangent,
            torch.func.jacfwd(outputs)(x),
            torch.func.jacrev(outputs)(x),
            torch.func.hessian(lambda x: module(x)[0].sin().sum())(x),
            torch.func.grad(lambda x: module(x)[1][0].sin().sum())(x),
            torch.func.vjp(outputs, x)[1](u)[0],
        ])
    names = ("forward_ad", "jacfwd", "jacrev", "hessian", "grad", "vjp")
    for name, a, b in zip(names, *results):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_vmap_over_inputs_and_states_matches_a_loop():
    _, ours = twins(CASE)
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(5, CASE.B, CASE.T, CASE.I, generator=gen, dtype=torch.float64)
    h0 = torch.randn(5, 4, CASE.B, 2, generator=gen, dtype=torch.float64)
    c0 = torch.randn(5, 4, CASE.B, 4, generator=gen, dtype=torch.float64)
    with no_vmap_loops(), fused_only(), torch.no_grad():
        mapped = torch.func.vmap(lambda x, h, c: ours(x, (h, c)))(xs, h0, c0)
        plain = torch.func.vmap(lambda x: ours(x))(xs)
    with torch.no_grad():
        for k in range(5):
            out, (h_n, c_n) = ours(xs[k], (h0[k], c0[k]))
            for a, b in zip((mapped[0], *mapped[1]), (out, h_n, c_n)):
                torch.testing.assert_close(a[k], b, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(plain[0][k], ours(xs[k])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unbatched", [True, False])
def test_per_sample_gradients_match_a_loop(unbatched):
    """vmap(grad) over the samples of a batch (each unbatched (T, I), or a batch
    of one): every parameter's gradient per sample, in one backward pass per
    layer and direction."""
    case = ModuleCase(layers=2, bidirectional=True, proj=2, batch_first=True, T=5, I=3, H=4)
    _, ours = twins(case)
    params = {n: p.detach() for n, p in ours.named_parameters()}

    def loss(params, sample):
        x = sample if unbatched else sample.unsqueeze(0)
        out, (h_n, c_n) = functional_call(ours, params, (x,))
        return out.tanh().sum() + h_n.square().sum() + c_n.sum()

    samples = torch.randn(6, case.T, case.I, dtype=torch.float64)
    with no_vmap_loops(), fused_only():
        per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, samples)
    for k in range(6):
        expected = torch.func.grad(loss)(params, samples[k])
        for name in params:
            torch.testing.assert_close(per_sample[name][k], expected[name], rtol=1e-12,
                                       atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_every_flag(packed):
    _, ours = twins(CASE)
    packing = _packing(torch.tensor([2, 4, 1]), CASE.T, CASE.B) if packed else None
    if packed:
        ours.batch_first = False
    primals = [p.clone().requires_grad_() for p in _primals(ours, CASE)]
    if packed:
        primals[0] = primals[0].detach().transpose(0, 1).contiguous().requires_grad_()
    assert torch.autograd.gradcheck(_module_fn(ours, packing), primals, **GRADCHECK_FLAGS)


def test_gradgradcheck_every_flag():
    case = ModuleCase(layers=2, bidirectional=True, proj=1, T=2, B=2, I=2, H=2)
    _, ours = twins(case)
    primals = [p.clone().requires_grad_() for p in _primals(ours, case)]
    assert torch.autograd.gradgradcheck(_module_fn(ours), primals, **GRADGRADCHECK_FLAGS)
