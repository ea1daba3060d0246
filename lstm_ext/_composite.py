"""The layer written with PyTorch's differentiable ops, for derivatives of derivatives.

The fused backward and tangent ops have no derivatives of their own. When their
results are differentiated again (double backward, Hessians, forward-over-reverse,
an enclosing torch.func transform), the gradients and tangents come instead from
the layer recomputed here, one PyTorch LSTM cell per step, whose derivatives exist
to any order and under every torch.func transform. Slow, exact, and used only then.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Positions of the differentiable arguments of lstm_ext::lstm_layer:
# x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, rec_scale, zoneout_c,
# zoneout_h, ln_ih, ln_hh, ln_c_weight, ln_c_bias.
DIFFERENTIABLE = (0, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 16)
# Those the tangent op has (before reverse).
TANGENT_OP = tuple(i for i in DIFFERENTIABLE if i < 9)


def layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, rec_scale=None,
          zoneout_c=None, zoneout_h=None, ln_ih=None, ln_hh=None, ln_c_weight=None,
          ln_c_bias=None):
    """What lstm_ext::lstm_layer computes (y, h_n, c_n), from differentiable ops;
    with LayerNorm when ln_ih is given (all four then)."""
    sizes = batch_sizes.tolist()
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    steps = reversed(range(len(sizes))) if reverse else range(len(sizes))
    # The recurrent input goes in beside x: one product per step. The cell
    # is written out (torch's lstm_cell adds in place, which vmap refuses when
    # only some of its operands are batched).
    w_in = torch.cat([w_ih, w_hh], dim=1) if ln_ih is None else None
    bias = b_ih if b_hh is None else b_hh if b_ih is None else b_ih + b_hh
    h, c, ys = h0, c0, [None] * len(sizes)
    # Sequence r is row r of every step; rows a step does not reach keep their
    # state (a finished sequence's final one, or a reverse sequence's h0/c0).
    for t in steps:
        rows, first = sizes[t], offsets[t]
        h_prev = h[:rows] if rec_scale is None else h[:rows] * rec_scale[:rows]
        if ln_ih is None:
            a = torch.cat([x[first : first + rows], h_prev], dim=1) @ w_in.t()
        else:
            gates = (w_ih.shape[0],)
            a = (torch.nn.functional.layer_norm(x[first : first + rows] @ w_ih.t(), gates, ln_ih)
                 + torch.nn.functional.layer_norm(h_prev @ w_hh.t(), gates, ln_hh))
        i, f, g, o = (a if bias is None else a + bias).chunk(4, 1)
        c_t = f.sigmoid() * c[:rows] + i.sigmoid() * g.tanh()
        c_out = c_t if ln_ih is None else torch.nn.functional.layer_norm(
            c_t, c_t.shape[1:], ln_c_weight, ln_c_bias)
        h_t = o.sigmoid() * c_out.tanh()
        if zoneout_c is not None:
            c_t = c_t + zoneout_c[first : first + rows] * (c[:rows] - c_t)
        if w_hr is not None:
            h_t = h_t @ w_hr.t()
        if zoneout_h is not None:
            h_t = h_t + zoneout_h[first : first + rows] * (h[:rows] - h_t)
        ys[t] = h_t
        h, c = torch.cat([h_t, h[rows:]]), torch.cat([c_t, c[rows:]])
    return torch.cat(ys), h, c


def _as_function_of(inputs: Sequence, positions: Sequence[int]):
    """layer as a function of the arguments at `positions`, the others fixed."""

    def fn(*values):
        args = list(inputs)
        for i, value in zip(positions, values):
            args[i] = value
        return layer(*args)

    return fn


def vjp(inputs: Sequence, grads: Sequence[Tensor | None], needs_input_grad: Sequence[bool]):
    """Gradients of the op's arguments (in its argument order; None where not
    needed) given those of y, h_n, c_n (None for zero), with a graph."""
    wanted = [i for i in DIFFERENTIABLE if i < len(needs_input_grad) and needs_input_grad[i]
              and i < len(inputs) and inputs[i] is not None]
    outputs, pullback = torch.func.vjp(_as_function_of(inputs, wanted),
                                       *(inputs[i] for i in wanted))
    cotangents = tuple(g if g is not None else torch.zeros_like(o) for g, o in zip(grads, outputs))
    result = [None] * len(inputs)
    for i, g in zip(wanted, pullback(cotangents)):
        result[i] = g
    return tuple(result)


def jvp(inputs: Sequence, tangents: Sequence[Tensor | None]):
    """Tangents of y, h_n, c_n given those of the op's arguments (None for zero;
    at least one given)."""
    given = [i for i in DIFFERENTIABLE if i < len(tangents) and tangents[i] is not None]
    _, out = torch.func.jvp(_as_function_of(inputs, given), tuple(inputs[i] for i in given),
                            tuple(tangents[i] for i in given))
    return out


def jvp_by_vjp(inputs: Sequence, tangents: Sequence[Tensor | None], create_graph: bool):
    """jvp's results by reverse mode alone (the derivative of a vjp with respect
    to its cotangents), for forward-mode AD outside torch.func, where
    torch.func.jvp cannot nest: with a graph when `create_graph`."""
    given = [i for i in DIFFERENTIABLE if i < len(tangents) and tangents[i] is not None]
    with torch.enable_grad():
        # A node of its own per argument: one tensor given twice (b_ih is
        # b_hh) would otherwise get both arguments' gradient in each place.
        primals = [inputs[i].view_as(inputs[i]) if inputs[i].requires_grad
                   else inputs[i].detach().requires_grad_() for i in given]
        outputs = _as_function_of(inputs, given)(*primals)
        cotangents = [torch.zeros_like(o, requires_grad=True) for o in outputs]
        grads = torch.autograd.grad(outputs, primals, cotangents, create_graph=True,
                                    allow_unused=True)
        used = [(g, tangents[i]) for g, i in zip(grads, given) if g is not None]
        out = torch.autograd.grad([g for g, _ in used], cotangents, [t for _, t in used],
                                  create_graph=create_graph, allow_unused=True)
    return tuple(torch.zeros_like(o) if t is None else t for o, t in zip(outputs, out))


def tangent_vjp(inputs: Sequence, tangents: Sequence[Tensor | None],
                cotangents: Sequence[Tensor | None], needs_input_grad: Sequence[bool]):
    """Gradients, with a graph, of the tangents jvp(inputs, tangents) computes,
    given those of its results (None for zero): for each of the op's 9
    arguments before `reverse`, then for each of their tangents (None where not
    needed). `inputs` are the op's arguments, rec_scale and zoneout's included."""
    wanted = [i for i in TANGENT_OP if needs_input_grad[i] and inputs[i] is not None]
    wanted_t = [i for i in TANGENT_OP if needs_input_grad[9 + i] and tangents[i] is not None]

    def fn(*values):
        args, tans = list(inputs), list(tangents)
        for i, v in zip(wanted, values):
            args[i] = v
        for i, v in zip(wanted_t, values[len(wanted):]):
            tans[i] = v
        return jvp(args, tans)

    outputs, pullback = torch.func.vjp(fn, *(inputs[i] for i in wanted),
                                       *(tangents[i] for i in wanted_t))
    cots = tuple(c if c is not None else torch.zeros_like(o) for c, o in zip(cotangents, outputs))
    result = [None] * 18
    for i, g in zip([*wanted, *(9 + i for i in wanted_t)], pullback(cots)):
        result[i] = g
    return tuple(result)
