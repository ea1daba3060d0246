"""The layer stack as torch.lstm, for ONNX export.

Both ONNX exporters (dynamo=True and the TorchScript one) translate torch.lstm,
which nn.LSTM runs, into ONNX's standard LSTM operator, which every ONNX runtime
runs and runs fast; a custom op they could only carry as a custom domain. So
while an export runs, the same weights go through torch.lstm instead of the
fused op: the exported model is the one nn.LSTM's export gives, and fails where
that one fails (projections under the TorchScript exporter, PackedSequence
under dynamo=True), with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def lstm(input: Tensor, hx, weights: Sequence[Tensor], *, bias: bool, num_layers: int,
         bidirectional: bool, batch_first: bool, dropout: float, training: bool,
         batch_sizes: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """What functional.lstm computes, through torch.lstm."""
    if hx is None:
        hx = _zeros(input, weights, num_layers * (2 if bidirectional else 1), batch_first,
                    batch_sizes)
    if batch_sizes is None:
        y, h_n, c_n = torch.lstm(input, hx, weights, bias, num_layers, dropout, training,
                                 bidirectional, batch_first)
    else:
        y, h_n, c_n = torch.lstm(input, batch_sizes, hx, weights, bias, num_layers, dropout,
                                 training, bidirectional)
    return y, (h_n, c_n)


def lstm_layer(input: Tensor, hx, w_ih, w_hh, b_ih, b_hh, w_hr, *, batch_sizes: Tensor | None,
               reverse: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """What functional.lstm_layer computes, through torch.lstm. torch.lstm runs a
    reverse direction only beside a forward one: for padded input, where every
    sequence has all steps, the reverse direction is the forward one on the
    sequence reversed in time."""
    if reverse and batch_sizes is not None:
        raise NotImplementedError(
            "lstm_ext.lstm_layer: ONNX export of a reverse layer on packed input is not "
            "supported; export lstm_ext.lstm with bidirectional=True (or the module) instead")
    has_bias = b_ih is not None or b_hh is not None
    weights = [w_ih, w_hh]
    if has_bias:
        zeros = w_hh.new_zeros(w_hh.shape[0])
        weights += [b_ih if b_ih is not None else zeros, b_hh if b_hh is not None else zeros]
    if w_hr is not None:
        weights.append(w_hr)
    if hx is not None:
        hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
    if reverse:
        input = input.flip(0)
    y, (h_n, c_n) = lstm(input, hx, weights, bias=has_bias, num_layers=1, bidirectional=False,
                         batch_first=False, dropout=0.0, training=False, batch_sizes=batch_sizes)
    return (y.flip(0) if reverse else y), (h_n[0], c_n[0])


def _zeros(input, weights, groups, batch_first, batch_sizes):
    """nn.LSTM's zero states: the batch from the input's shape (an exported model keeps
    it dynamic), or the first of the packed batch sizes."""
    if batch_sizes is not None:
        batch = int(batch_sizes[0])
    else:
        batch = input.shape[0 if batch_first else 1]
    hidden, out = weights[1].shape[0] // 4, weights[1].shape[1]
    zeros = dict(dtype=input.dtype, device=input.device)
    return torch.zeros(groups, batch, out, **zeros), torch.zeros(groups, batch, hidden, **zeros)
