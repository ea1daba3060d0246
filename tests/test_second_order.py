"""Second-order gradients: the backward of the fused layer is itself
differentiable (by the composite layer, lstm_ext/_composite.py). The module's
gradgradcheck is in test_module_autograd_modes.py."""

import pytest
import torch

import lstm_ext


def _inputs(packed, proj, bias):
    torch.manual_seed(0)
    I, H, B = 3, 4, 3
    P = 2 if proj else H

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    x = t(int(batch_sizes.sum()), I) if packed else t(3, B, I)
    tensors = [x, t(B, P), t(B, H), t(4 * H, I), t(4 * H, P)]
    tensors += [t(4 * H), t(4 * H)] if bias else []
    tensors += [t(P, H)] if proj else []
    return tensors, batch_sizes


@pytest.mark.parametrize("packed, reverse, proj, bias", [
    (False, False, False, True),
    (True, True, True, True),
    (True, False, False, False),
])
def test_gradgradcheck(packed, reverse, proj, bias):
    tensors, batch_sizes = _inputs(packed, proj, bias)

    def layer(x, h0, c0, w_ih, w_hh, *rest):
        b_ih, b_hh = rest[:2] if bias else (None, None)
        w_hr = rest[-1] if proj else None
        y, (h_n, c_n) = lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr,
                                            batch_sizes=batch_sizes, reverse=reverse)
        return y, h_n, c_n

    assert torch.autograd.gradgradcheck(layer, tensors, check_batched_grad=True,
                                        check_fwd_over_rev=True, check_rev_over_rev=True,
                                        check_undefined_grad=True)


def test_hessian_vector_product_matches_nn_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    weights = tuple(p.detach() for p in lstm.parameters())
    vectors = tuple(torch.randn_like(w) for w in weights)

    def loss_ours(*w):
        y, (h_n, _) = lstm_ext.lstm_layer(x, None, *w)
        return y.tanh().sum() + h_n.square().sum()

    def loss_torch(*w):
        y, h_n, _ = torch._VF.lstm(x, (torch.zeros(1, 2, 4, dtype=x.dtype),) * 2, w, True, 1,
                                   0.0, False, False, False)
        return y.tanh().sum() + h_n.square().sum()

    _, hvp_ours = torch.autograd.functional.hvp(loss_ours, weights, vectors)
    _, hvp_torch = torch.autograd.functional.hvp(loss_torch, weights, vectors)
    for a, b in zip(hvp_ours, hvp_torch):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_first_order_backward_stays_fused():
    """Without create_graph the fused backward runs: its gradients carry no graph."""
    tensors, _ = _inputs(False, False, True)
    y, _ = lstm_ext.lstm_layer(tensors[0], (tensors[1], tensors[2]), *tensors[3:])
    grads = torch.autograd.grad(y.sum(), tensors)
    assert all(g.grad_fn is None for g in grads)
