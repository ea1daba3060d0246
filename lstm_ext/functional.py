"""Functional forms of the fused LSTM."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _ops


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

    Returns:
        ``(output, (h_n, c_n))``: output is ``(T, B, P)`` for padded input,
        ``(sum(batch_sizes), P)`` for packed; h_n ``(B, P)``, c_n ``(B, H)``,
        each sequence's state after its own last step.
    """
    padded = batch_sizes is None
    if padded:
        if input.dim() != 3:
            raise ValueError(
                f"lstm_layer: padded input must be 3-D (T, B, I), got shape {tuple(input.shape)}"
            )
        steps, batch = input.shape[0], input.shape[1]
        batch_sizes = torch.full((steps,), batch, dtype=torch.int64)
        x = input.reshape(steps * batch, input.shape[2])
    else:
        x = input
    if hx is None:
        if not padded:
            batch = int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
        hidden, out = w_hh.shape[0] // 4, w_hh.shape[1]
        zeros = dict(dtype=input.dtype, device=input.device)
        hx = (torch.zeros(batch, out, **zeros), torch.zeros(batch, hidden, **zeros))
    y, h_n, c_n, _, _ = _ops.lstm_layer(
        x, batch_sizes, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh, w_hr, reverse
    )
    if padded:
        y = y.view(steps, batch, y.shape[1])
    return y, (h_n, c_n)
