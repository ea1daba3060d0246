"""Gradients of one layer that can themselves be differentiated.

The fused backward op has no derivative of its own. When a backward pass must
be differentiated again (create_graph=True: double backward, Hessian-vector
products, gradient penalties), its gradients come instead from the layer
recomputed with PyTorch's own LSTM cell, whose derivatives exist to any order.
One small op per step: slow, but exact, and only used when asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """What lstm_ext::lstm_layer computes (y, h_n, c_n), from differentiable ops."""
    sizes = batch_sizes.tolist()
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    steps = reversed(range(len(sizes))) if reverse else range(len(sizes))
    # The recurrent input goes in beside x (PyTorch's cell wants its own h of
    # size H, which a projected h is not), so the cell's own h is zero.
    w_in = torch.cat([w_ih, w_hh], dim=1)
    no_h = w_hh.new_zeros(w_hh.shape[0], c0.shape[1])
    h, c, ys = h0, c0, [None] * len(sizes)
    # Sequence r is row r of every step; rows a step does not reach keep their
    # state (a finished sequence's final one, or a reverse sequence's h0/c0).
    for t in steps:
        rows, first = sizes[t], offsets[t]
        inputs = torch.cat([x[first : first + rows], h[:rows]], dim=1)
        h_t, c_t = torch._VF.lstm_cell(inputs, (torch.zeros_like(c[:rows]), c[:rows]), w_in, no_h,
                                       b_ih, b_hh)
        if w_hr is not None:
            h_t = h_t @ w_hr.t()
        ys[t] = h_t
        h, c = torch.cat([h_t, h[rows:]]), torch.cat([c_t, c[rows:]])
    return torch.cat(ys), h, c


def layer_gradients(inputs, grads, needs_input_grad) -> tuple[Tensor | None, ...]:
    """Gradients of the op's inputs, in the op's argument order, with a graph.

    inputs: the op's arguments (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
    w_hr, reverse); grads: the gradients of y, h_n, c_n (None where unused).
    """
    with torch.enable_grad():
        outputs = _layer(*inputs)
        used = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        wanted = [i for i, need in enumerate(needs_input_grad) if need]
        result = torch.autograd.grad(
            [o for o, _ in used], [inputs[i] for i in wanted], [g for _, g in used],
            create_graph=True, allow_unused=True,
        )
    out = [None] * len(inputs)
    for i, g in zip(wanted, result):
        out[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(out)
