"""FLOP formulas of the ops, for torch.utils.flop_counter.FlopCounterMode.

As torch's own formulas count them: 2 x the multiply-adds of the products, the
elementwise cell work not counted, from shapes alone. Every product has one row
per row of x, which is sum(batch_sizes): packed input counts only real steps.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


def _sizes(x, w_hh, w_hr):
    """rows, input size I, gates 4H, output size P, and H if projected (else 0)."""
    rows, inputs = x
    gates, out = w_hh
    return rows, inputs, gates, out, (w_hr[1] if w_hr is not None else 0)


def forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, *kept,
            **kwargs) -> int:
    """x W_ih^T for all steps, h_{t-1} W_hh^T per step and, projected, h_t W_hr^T."""
    rows, inputs, gates, out, proj = _sizes(x, w_hh, w_hr)
    return 2 * rows * (gates * (inputs + out) + proj * out)


def stack_inference(x, batch_sizes, h0, c0, weights, kept, has_biases, num_layers,
                    bidirectional, **kwargs) -> int:
    """Every layer's and direction's forward, each on the rows of x."""
    groups = num_layers * (2 if bidirectional else 1)
    per_group = len(weights) // groups
    total = 0
    for k in range(groups):
        w_ih, w_hh, *rest = weights[k * per_group : (k + 1) * per_group]
        w_hr = rest[-1] if per_group in (3, 5) else None
        total += forward((x[0], w_ih[1]), batch_sizes, h0, c0, w_ih, w_hh, None, None, w_hr,
                         False)
    return total


def backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse,
             output_mask, groups=1, rec_scale=None, problems=None, zoneout_c=None,
             zoneout_h=None, ln_ih=None, *_more, **kwargs) -> int:
    """Per step dgates W_hh (and, projected, dy W_hr); after, as output_mask asks, dgates
    W_ih (dx), dgates^T x and dgates^T h_{t-1} (dW_ih, dW_hh), dy^T h_t (dW_hr). With
    LayerNorm, x W_ih^T and h_{t-1} W_hh^T made again too."""
    want_input, want_weights, _, want_proj = output_mask
    rows, inputs, gates, out, proj = _sizes(x, w_hh, w_hr)
    per_row = gates * out + proj * out
    per_row += gates * (inputs + out) * (ln_ih is not None)
    per_row += gates * inputs * want_input
    per_row += gates * (inputs + out) * want_weights
    per_row += proj * out * want_proj
    return 2 * rows * per_row


def jvp(x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse, dx, dh0, dc0, dw_ih,
        dw_hh, db, dw_hr, rec_scale=None, **kwargs) -> int:
    """The forward's products on tangents, per step, plus those of each tangent given
    for x, W_ih, W_hh, W_hr with the forward's values."""
    rows, inputs, gates, out, proj = _sizes(x, w_hh, w_hr)
    per_row = gates * out + proj * out
    per_row += gates * inputs * ((dx is not None) + (dw_ih is not None))
    per_row += gates * out * (dw_hh is not None)
    per_row += proj * out * (dw_hr is not None)
    return 2 * rows * per_row


def register(namespace: str) -> None:
    ops = getattr(torch.ops, namespace)
    register_flop_formula([ops.lstm_layer, ops.lstm_layer_inference])(forward)
    register_flop_formula(ops.lstm_inference)(stack_inference)
    register_flop_formula(ops.lstm_layer_backward)(backward)
    register_flop_formula(ops.lstm_layer_jvp)(jvp)
