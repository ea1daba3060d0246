"""Functional forms of the fused LSTM: one layer (lstm_layer) and the whole stack (lstm)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _onnx, _ops
from ._checks import ZONED_OUT, check_lstm_args, probability, unpack_group, weights_per_group
from ._layouts import KeptLayouts, eager_inference


def lstm_layer(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
    *,
    batch_sizes: Tensor | None = None,
    reverse: bool = False,
    recurrent_scale: Tensor | None = None,
    zoneout_cell: Tensor | None = None,
    zoneout_hidden: Tensor | None = None,
    layer_norm: Sequence[Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Runs one LSTM layer in one direction over a whole sequence, fused.

    Weights have ``torch.nn.LSTM``'s layout and gate order (i, f, g, o):
    ``w_ih`` (4H, I), ``w_hh`` (4H, P), ``b_ih``/``b_hh`` (4H,), and with a
    projection ``w_hr`` (P, H); P is the projection size, or H without one.

    Args:
        input: padded ``(T, B, I)``; or, when ``batch_sizes`` is given, packed
            ``(sum(batch_sizes), I)`` as in ``PackedSequence.data``.
        hx: ``(h0, c0)`` of shapes ``(B, P)`` and ``(B, H)``, or None for zeros.
        batch_sizes: int64 CPU tensor of non-increasing sizes, one per step
            (``PackedSequence.batch_sizes``); None for padded input.
        reverse: process the sequence from its last step to its first, as the
            backward direction of a bidirectional LSTM does.
        recurrent_scale: ``(B, P)``, in x's dtype: h_{t-1} (h0 included)
            enters the recurrent product as ``h_{t-1} * recurrent_scale``, per
            sequence and unit (recurrent dropout's explicit form: its mask over
            1 - p). The output and h_n are h itself. Constant: no gradient.
        zoneout_cell, zoneout_hidden: zoneout's explicit form, shaped as the
            output with H and P units (``(T, B, H)``, ``(T, B, P)``, or packed
            ``(sum(batch_sizes), H)``, ``(sum(batch_sizes), P)``), in x's
            dtype: at each step, sequence and unit, ``c_t = d * c_{t-1} +
            (1 - d) * c̃_t`` and ``h_t = d * h_{t-1} + (1 - d) * h̃_t`` with d
            their value there (0 or 1 in training, the probability in eval),
            h̃ after the projection if any. Constants: no gradient.
        layer_norm: LayerNorm's weights ``(ln_ih (4H), ln_hh (4H), ln_c_weight
            (H), ln_c_bias (H))`` (lstm_ext.LSTM's ``layer_norm``), or None.

    Returns:
        ``(output, (h_n, c_n))``: output is ``(T, B, P)`` for padded input,
        ``(sum(batch_sizes), P)`` for packed; h_n ``(B, P)``, c_n ``(B, H)``,
        each sequence's state after its own last step.
    """
    padded = batch_sizes is None
    if padded and input.dim() != 3:
        raise ValueError(
            f"lstm_layer: padded input must be 3-D (T, B, I), got shape {tuple(input.shape)}"
        )
    for name, t in (("recurrent_scale", recurrent_scale), ("zoneout_cell", zoneout_cell),
                    ("zoneout_hidden", zoneout_hidden)):
        if t is not None and t.requires_grad:
            raise RuntimeError(f"lstm_layer: {name} is a constant (a mask or its expectation) "
                               f"and gets no gradient; pass {name}.detach()")
    if torch.onnx.is_in_onnx_export():
        if recurrent_scale is not None:
            raise RuntimeError(_NO_ONNX_RECURRENT_DROPOUT)
        if zoneout_cell is not None or zoneout_hidden is not None:
            raise RuntimeError(_NO_ONNX_ZONEOUT)
        if layer_norm is not None:
            raise RuntimeError(_NO_ONNX_LAYER_NORM)
        return _onnx.lstm_layer(input, hx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes=batch_sizes,
                                reverse=reverse)
    if padded:
        steps, batch = input.shape[0], input.shape[1]
        x, batch_sizes = _as_packed(input)
    else:
        x, batch = input, None
    if hx is None:
        h0, c0 = _zero_state(x, batch, batch_sizes, 1, w_hh)
        hx = h0[0], c0[0]
    zoneout = tuple(z.flatten(0, 1) if padded and z is not None and z.dim() == 3 else z
                    for z in (zoneout_cell, zoneout_hidden))
    y, h_n, c_n = _layer(x, batch_sizes, *hx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                         rec_scale=recurrent_scale, zoneout=zoneout,
                         layer_norm=tuple(layer_norm or ()))
    if padded:
        y = y.view(steps, batch, y.shape[1])
    return y, (h_n, c_n)


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    weights: Sequence[Tensor],
    *,
    bias: bool = True,
    num_layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = True,
    batch_sizes: Tensor | None = None,
    kept_layouts: KeptLayouts | None = None,
    weight_drop: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout_hidden: float = 0.0,
    zoneout_cell: float = 0.0,
    layer_norm_weights: Sequence[Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A whole multi-layer LSTM, as ``torch.nn.LSTM`` computes it, on weights you hold.

    This is what ``lstm_ext.LSTM.forward`` runs once it has handled unbatched
    input and PackedSequence: the counterpart of ``torch.lstm``.

    Args:
        input: padded ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``); or, when
            ``batch_sizes`` is given, packed ``(sum(batch_sizes), I)`` as in
            ``PackedSequence.data``, whose batch is in the packed (sorted) order.
        hx: ``(h0, c0)`` of shapes ``(L * D, B, P)`` and ``(L * D, B, H)`` with D = 2
            when bidirectional, else 1; or None for zeros.
        weights: ``torch.nn.LSTM._flat_weights``' list: for each layer, then each
            direction, ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``. Whether there is a
            projection follows from the number of weights.
        bias: whether the weights include ``b_ih, b_hh``.
        dropout, training: dropout probability applied to the output of every
            layer but the last, only when ``training``.
        batch_first: padded input and output are ``(B, T, *)``; ignored for packed.
        kept_layouts: where no derivative can be asked for, the weights' layouts
            are taken from (and kept in) it instead of made afresh by every
            layer: lstm_ext.LSTM's, kept between its calls.
        weight_drop: when ``training``, every ``w_hh`` becomes
            ``w_hh * M / (1 - weight_drop)``, one Bernoulli(1 - weight_drop) mask
            M per layer and direction drawn for this call (``lstm_layer``
            takes such a weight as it is: that is its explicit form).
        recurrent_dropout: when ``training``, h_{t-1} enters each layer's and
            direction's recurrent product as ``h_{t-1} * m / (1 -
            recurrent_dropout)``, one Bernoulli(1 - recurrent_dropout) mask m
            per sequence and unit for every step (h0 included) drawn for this
            call (after the weight_drop masks); the output and h_n are h
            itself. ``lstm_layer``'s ``recurrent_scale`` is its explicit form.
        zoneout_hidden, zoneout_cell: zoneout (Krueger et al.) with these
            probabilities: at every step, sequence and unit of each layer and
            direction, ``h_t = d * h_{t-1} + (1 - d) * h̃_t`` (h̃ the LSTM's
            new h, after the projection if any) and ``c_t = d * c_{t-1} + (1
            - d) * c̃_t``, with d ~ Bernoulli(p) drawn for this call when
            ``training`` (after the recurrent dropout masks; one draw of every
            layer's and direction's h weights, then one of c's), d = p
            otherwise. ``lstm_layer``'s ``zoneout_hidden`` and
            ``zoneout_cell`` are its explicit form.
        layer_norm_weights: LayerNorm (lstm_ext.LSTM's ``layer_norm``): per
            layer, per direction, ``ln_ih_weight`` (4H), ``ln_hh_weight``
            (4H), ``ln_c_weight`` (H), ``ln_c_bias`` (H); None without.

    Returns:
        ``(output, (h_n, c_n))``: output ``(T, B, D * P)`` (``(B, T, D * P)`` with
        ``batch_first``) or, packed, ``(sum(batch_sizes), D * P)``; h_n ``(L * D, B, P)``
        and c_n ``(L * D, B, H)``, each sequence's state after its own last step.

    Input and states are checked against the weights before any layer runs, and
    raise what torch.lstm raises: RuntimeError (IndexError for an ``hx`` that is
    not 3-D), in nn.LSTM's words where it has them. Under autocast, padded input
    runs in autocast's dtype (the op's own autocast rule casts it); packed input
    does not, as torch.lstm's packed overload is not on autocast's list.
    """
    directions = 2 if bidirectional else 1
    groups = num_layers * directions
    per_group = weights_per_group(weights, groups, bias)
    packed = batch_sizes is not None
    check_lstm_args(input, hx, weights, batch_sizes, batch_first, groups)
    dropping_weights = probability("weight_drop", weight_drop) > 0 and training
    dropping_states = probability("recurrent_dropout", recurrent_dropout) > 0 and training
    zoneout_hidden = probability("zoneout_hidden", zoneout_hidden, ZONED_OUT)
    zoneout_cell = probability("zoneout_cell", zoneout_cell, ZONED_OUT)
    if dropping_weights:
        weights = _drop_recurrent_weights(weights, per_group, weight_drop)
    if (dropping_weights or dropping_states) and kept_layouts is not None:
        kept_layouts.clear()  # weights made for this call, or a step the stack op lacks
        kept_layouts = None
    if torch.onnx.is_in_onnx_export():
        if dropping_states:
            raise RuntimeError(_NO_ONNX_RECURRENT_DROPOUT)
        if zoneout_hidden or zoneout_cell:
            raise RuntimeError(_NO_ONNX_ZONEOUT)
        if layer_norm_weights is not None:
            raise RuntimeError(_NO_ONNX_LAYER_NORM)
        return _onnx.lstm(input, hx, weights, bias=bias, num_layers=num_layers,
                          bidirectional=bidirectional, batch_first=batch_first, dropout=dropout,
                          training=training, batch_sizes=batch_sizes)

    # With no rows (an empty batch) there is nothing for the op to run.
    rows = input.shape[0] if packed else input.shape[0] * input.shape[1]
    run = _layer if rows > 0 else _empty_layer
    if kept_layouts is not None and (run is not _layer
                                     or not eager_inference(input, hx or (), weights)):
        # Weights trained (or converted) here will be laid out again: none kept.
        kept_layouts.clear()
        kept_layouts = None

    if packed:
        x, batch = input, None
    else:
        if batch_first:
            input = input.transpose(0, 1)
        steps, batch = input.shape[0], input.shape[1]
        x, batch_sizes = _as_packed(input, eager=kept_layouts is not None)
    h0, c0 = _zero_state(x, batch, batch_sizes, groups, weights[1]) if hx is None else hx
    if c0.dtype != x.dtype:
        c0 = c0.to(x.dtype)  # a lower-precision c0 is promoted, as nn.LSTM does
    # Recurrent dropout's m / (1 - p), for every layer and direction at once.
    scales = (_keep_scales(h0.shape, recurrent_dropout, x.dtype, h0.device) if dropping_states
              else None)
    zoneout = _zoneout_weights(x, groups, h0.shape[2], c0.shape[2], zoneout_hidden,
                               zoneout_cell, training)
    if layer_norm_weights is not None:
        if len(layer_norm_weights) != 4 * groups:
            raise RuntimeError(f"lstm: expected 4 LayerNorm weights for each of {groups} layers "
                               f"and directions, got {len(layer_norm_weights)}")
        kept_layouts = None  # the decode op has no LayerNorm

    dropping = dropout > 0 and training and num_layers > 1
    if kept_layouts is not None and not dropping and zoneout is None:
        # A decode step's Python is most of its time: the whole stack in one op
        # (which opens each layer's profiler range itself).
        kept = kept_layouts.get_all(weights, per_group, bias)
        with torch._C._AutoDispatchBelowAutograd():
            x, h_n, c_n = _ops.lstm_inference(x, batch_sizes, h0, c0, weights, kept, bias,
                                              num_layers, bidirectional)
    else:
        x, h_n, c_n = _layers(run, x, batch_sizes, h0, c0, weights, per_group, bias, num_layers,
                              directions, dropout if dropping else 0.0, packed, kept_layouts,
                              scales, zoneout, layer_norm_weights)

    if not packed:
        x = x.view(steps, batch, x.shape[1])
        if batch_first:
            x = x.transpose(0, 1)
    return x, (h_n, c_n)


def _keep_scales(shape, p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """m / (1 - p), m ~ Bernoulli(1 - p) elementwise: uniform draws kept where
    >= p, in float32 whatever dtype (a 16-bit uniform would skew the
    probability); half the time of bernoulli_ or F.dropout on a CPU."""
    return torch.rand(shape, device=device).ge_(p).to(dtype).div_(1 - p)


def _zoneout_weights(x: Tensor, groups: int, out: int, hidden: int, p_h: float, p_c: float,
                     training: bool):
    """Zoneout's weights of every layer and direction in the op's order,
    (groups, rows, H) for c and (groups, rows, P) for h (None where p is
    0), or None without zoneout: Bernoulli(p) draws in training (uniforms in float32 below p, as
    _keep_scales), p itself otherwise, in x's dtype (expanded here; the op
    makes its own rows of it)."""
    if not p_h and not p_c:
        return None
    rows = x.shape[0]

    def weights(p, width):
        if not p:
            return None
        if training:
            return torch.rand(groups, rows, width, device=x.device).lt_(p).to(x.dtype)
        return x.new_full((), p).expand(groups, rows, width)

    h = weights(p_h, out)  # drawn first
    return weights(p_c, hidden), h


def _drop_recurrent_weights(weights: Sequence[Tensor], per_group: int, p: float) -> list[Tensor]:
    """The weights with each w_hh (the second of a group) dropped out, in
    order of layers and directions: W_hh * M / (1 - p)."""
    weights = list(weights)
    for k in range(1, len(weights), per_group):
        w = weights[k]
        weights[k] = w * _keep_scales(w.shape, p, w.dtype, w.device)
    return weights


_NO_ONNX_RECURRENT_DROPOUT = (
    "lstm_ext: recurrent dropout in training mode has no ONNX form (the ONNX LSTM operator "
    "has no mask on its recurrent input); export the model in eval mode, where it is the "
    "plain LSTM")

_NO_ONNX_LAYER_NORM = ("lstm_ext: LayerNorm has no ONNX form (the ONNX LSTM operator "
                       "normalises nothing)")

_NO_ONNX_ZONEOUT = (
    "lstm_ext: zoneout has no ONNX form (the ONNX LSTM operator cannot keep a unit's "
    "previous state), in training or eval")


def _layers(run, x, batch_sizes, h0, c0, weights, per_group, bias, num_layers, directions,
            dropout, packed, kept_layouts, scales=None, zoneout=None, layer_norm=None):
    """The layers one op call each: output, h_n, c_n; `scales`, recurrent
    dropout's per layer and direction, or None; `zoneout`, (c's, h's)
    weights per layer and direction (_zoneout_weights), or None."""
    h0, c0 = h0.unbind(0), c0.unbind(0)
    h_n, c_n = [], []
    with _autocast_rule(x, packed):
        for layer in range(num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                group = weights[k * per_group : (k + 1) * per_group]
                laid_out = kept_layouts.get(k, group, bias) if kept_layouts is not None else ()
                with _profiler_label(layer, direction):
                    y, h, c = run(x, batch_sizes, h0[k], c0[k], *unpack_group(group, bias),
                                  direction == 1, laid_out,
                                  None if scales is None else scales[k],
                                  () if zoneout is None else
                                  tuple(None if w is None else w[k] for w in zoneout),
                                  () if layer_norm is None else layer_norm[4 * k : 4 * k + 4])
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, 1) if directions == 2 else outputs[0]
            # nn.LSTM applies ATen's dropout to this same tensor (viewed as (T, B, D * P)
            # when padded): same elements in the same order, so a seed draws the same mask.
            if dropout > 0 and layer < num_layers - 1:
                x = torch.dropout(x, dropout, True)
    return x, _stack(h_n), _stack(c_n)


def _layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, laid_out=(),
           rec_scale=None, zoneout=(), layer_norm=()):
    """The op on packed ``x``: ``(y, h_n, c_n)``; `zoneout` empty or the op's
    (zoneout_c, zoneout_h). With a kept layout the layer is known to run the
    eager inference op (eager_inference): straight to it."""
    if layer_norm:
        return _ops.layer_entry(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                rec_scale, *(zoneout or (None, None)), *layer_norm)
    if laid_out:
        with torch._C._AutoDispatchBelowAutograd():
            return _ops.lstm_layer_inference(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                             w_hr, reverse, *laid_out, rec_scale, *zoneout)
    return _ops.layer_entry(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                            rec_scale, *zoneout)


def _empty_layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, laid_out=(),
                 rec_scale=None, zoneout=(), layer_norm=()):
    """An empty batch: no rows to run. Results cut from the (empty) input projection
    keep, like nn.LSTM's, their place in the autograd graph."""
    gates = x @ w_ih.t()
    y, cell = gates[:, : h0.shape[1]], gates[:, : c0.shape[1]]
    return y, h0 + y, c0 + cell


def _as_packed(input: Tensor, eager: bool = False) -> tuple[Tensor, Tensor]:
    """A padded (T, B, I) tensor is the packed layout with batch_sizes [B] * T.
    `eager` (no FakeTensorMode, no tracing): one batch_sizes per shape serves
    every call, as a decode step's whole Python path is tens of microseconds."""
    steps, batch = input.shape[0], input.shape[1]
    make = _kept_batch_sizes if eager else _batch_sizes
    return input.reshape(steps * batch, input.shape[2]), make(steps, batch)


def _batch_sizes(steps: int, batch: int) -> Tensor:
    return torch.full((steps,), batch, dtype=torch.int64, device="cpu")


_kept_batch_sizes = functools.lru_cache(maxsize=64)(_batch_sizes)


def _stack(states: list[Tensor]) -> Tensor:
    """h_n or c_n from each layer's and direction's; one alone without a copy."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)


def _zero_state(
    x: Tensor, batch: int | None, batch_sizes: Tensor, groups: int, w_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """Zero (h0, c0) of shapes (groups, batch, P) and (groups, batch, H); for
    packed input (batch None) the batch is batch_sizes[0]."""
    hidden, out = w_hh.shape[0] // 4, w_hh.shape[1]
    if batch is None:
        return (_ops.packed_zeros(batch_sizes, groups, out, x.dtype, x.device),
                _ops.packed_zeros(batch_sizes, groups, hidden, x.dtype, x.device))
    zeros = dict(dtype=x.dtype, device=x.device)
    return torch.zeros(groups, batch, out, **zeros), torch.zeros(groups, batch, hidden, **zeros)


def _profiler_label(layer: int, direction: int):
    """A profiler range naming the layer and direction, as nn.LSTM's parameters are
    named ("layer 1 reverse" for weight_hh_l1_reverse's). Only while a profiler runs:
    otherwise entering a range would cost a dispatcher call per layer."""
    if not torch.autograd.profiler._is_profiler_enabled:
        return contextlib.nullcontext()
    name = f"lstm_ext.lstm layer {layer}{' reverse' if direction else ''}"
    return torch.autograd.profiler.record_function(name)


def _autocast_rule(x: Tensor, packed: bool):
    """Autocast as torch.lstm has it: padded input runs in autocast's dtype (the
    op's own autocast rule casts it); the packed overload is not on autocast's
    list, so packed input runs in its own dtype."""
    device = x.device.type
    # Meta has no autocast at all (and torch.amp.is_autocast_available breaks Dynamo's graph).
    if packed and device != "meta" and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()
