"""torch.autograd.gradcheck of the fused layer, float64, small shapes, with
every check gradcheck has: batched gradients (vmap over cotangents), forward-mode
AD and vmap over tangents, and undefined output gradients."""

import pytest
import torch

import lstm_ext

CONFIGS = [
    dict(packed=False, reverse=False, proj=0, bias=True),
    dict(packed=True, reverse=False, proj=0, bias=True),
    dict(packed=True, reverse=True, proj=0, bias=False),
    dict(packed=True, reverse=True, proj=2, bias=True),
    dict(packed=False, reverse=True, proj=2, bias=False),
]


FLAGS = dict(check_batched_grad=True, check_forward_ad=True, check_backward_ad=True,
             check_undefined_grad=True, check_batched_forward_grad=True)


def config_id(cfg):
    return "-".join(f"{k}={v}" for k, v in cfg.items())


def gradcheck_layer(cfg, lstm_layer):
    """gradcheck of `lstm_layer` (lstm_ext.lstm_layer's signature) on the config's inputs."""
    torch.manual_seed(0)
    I, H = 3, 4
    P = cfg["proj"] or H
    if cfg["packed"]:
        batch_sizes = torch.tensor([3, 3, 2, 1], dtype=torch.int64)
        x_shape, B = (int(batch_sizes.sum()), I), 3
    else:
        batch_sizes, x_shape, B = None, (4, 3, I), 3

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = [t(*x_shape), t(B, P), t(B, H), t(4 * H, I), t(4 * H, P)]
    inputs += [t(4 * H), t(4 * H)] if cfg["bias"] else []
    inputs += [t(P, H)] if cfg["proj"] else []

    def layer(x, h0, c0, w_ih, w_hh, *rest):
        b_ih, b_hh = rest[:2] if cfg["bias"] else (None, None)
        w_hr = rest[-1] if cfg["proj"] else None
        y, (h_n, c_n) = lstm_layer(
            x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr,
            batch_sizes=batch_sizes, reverse=cfg["reverse"],
        )
        return y, h_n, c_n

    assert torch.autograd.gradcheck(layer, inputs, **FLAGS)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_gradcheck(cfg):
    gradcheck_layer(cfg, lstm_ext.lstm_layer)
