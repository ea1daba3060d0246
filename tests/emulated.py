"""The CUDA kernels and executor run on the CPU (lstm_ext._emu, csrc/emu):
torch.ops.lstm_ext_emu with lstm_ext's fake and autograd rules, and
`lstm_layer`, a stand-in for lstm_ext.lstm_layer that runs it."""

import torch

import lstm_ext._emu  # noqa: F401  (importing it registers torch.ops.lstm_ext_emu)
from lstm_ext import _ops

op = _ops.register("lstm_ext_emu")


def lstm_layer(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, *, batch_sizes=None,
               reverse=False, recurrent_scale=None, zoneout_cell=None, zoneout_hidden=None):
    """lstm_ext.lstm_layer's signature and results; hx must be given."""
    padded = batch_sizes is None
    x = input.flatten(0, 1) if padded else input
    if padded:
        batch_sizes = torch.full((input.shape[0],), input.shape[1], dtype=torch.int64)
    zoneout = (None if z is None else z.flatten(0, 1) if padded else z
               for z in (zoneout_cell, zoneout_hidden))
    y, h_n, c_n = op(x, batch_sizes, *hx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, recurrent_scale,
                     *zoneout)
    return (y.unflatten(0, input.shape[:2]) if padded else y), (h_n, c_n)
