"""The argument checks lstm_ext.lstm runs before any layer: what torch.lstm checks,
and what its kernels would otherwise trip over halfway through. Mistakes nn.LSTM
names itself get its words (ATen's for device and dtype). All raise RuntimeError,
as torch.lstm does, except an hx of the wrong rank: IndexError, as there. Also
how the weights list is read: per layer and direction, in nn.LSTM's order."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


def weights_per_group(weights: Sequence[Tensor], groups: int, bias: bool) -> int:
    """How many weights each of the `groups` layers and directions has: 2, or 4
    with biases, and one more with a projection."""
    base = 4 if bias else 2
    per_group, rest = divmod(len(weights), groups)
    if rest or per_group not in (base, base + 1):
        raise RuntimeError(
            f"lstm: expected {base} weights ({base + 1} with a projection) for each of "
            f"{groups} layers and directions, got {len(weights)} weights"
        )
    return per_group


# How zoneout's probabilities are described.
ZONED_OUT = "of a unit keeping its previous state"


def probability(name: str, p, of: str = "of an element being zeroed") -> float:
    """p as a probability (by default of zeroing), in [0, 1) (1 would scale by
    1 / 0, or never update); ValueError otherwise, as nn.LSTM raises for its
    dropout."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p < 1:
        raise ValueError(f"{name} should be a number in range [0, 1) representing the "
                         f"probability {of}, got {p!r}")
    return float(p)


def unpack_group(group: Sequence[Tensor], bias: bool):
    """w_ih, w_hh, b_ih, b_hh, w_hr of one layer and direction; absent ones are None."""
    w_ih, w_hh, *rest = group
    b_ih, b_hh = rest[:2] if bias else (None, None)
    w_hr = rest[-1] if len(rest) in (1, 3) else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def check_lstm_args(
    input: Tensor,
    hx: Sequence[Tensor] | None,
    weights: Sequence[Tensor],
    batch_sizes: Tensor | None,
    batch_first: bool,
    groups: int,
) -> None:
    if hx is not None and len(hx) != 2:
        raise RuntimeError("lstm expects two hidden states")
    _check_input(input, batch_sizes is not None, batch_first, weights[0].shape[1])
    params = [("parameter", w) for w in weights]
    for name, t in [("hidden", t) for t in hx or ()] + params:
        if t.device != input.device:
            raise RuntimeError(
                f"Input and {name} tensors are not at the same device, found input tensor at "
                f"{input.device} and {name} tensor at {t.device}"
            )
    same_dtype = params
    if hx is not None:
        same_dtype = [("hidden", hx[0])] + params
        # nn.LSTM's CPU cell multiplies c0 into the gates' dtype: a c0 of lower
        # precision is promoted, not refused.
        if torch.promote_types(hx[1].dtype, input.dtype) != input.dtype:
            same_dtype.append(("hidden", hx[1]))
    for name, t in same_dtype:
        if t.dtype != input.dtype:
            raise RuntimeError(
                f"Input and {name} tensors are not the same dtype, found input tensor with "
                f"{input.dtype} and {name} tensor with {t.dtype}"
            )
    if hx is not None:
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = input.shape[0] if batch_first else input.shape[1]
        _check_hidden(hx, groups, batch, weights[1])


def _check_input(input: Tensor, packed: bool, batch_first: bool, input_size: int) -> None:
    dims = 2 if packed else 3
    if input.dim() != dims:
        raise RuntimeError(f"input must have {dims} dimensions, got {input.dim()}")
    if not packed and input.shape[1 if batch_first else 0] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if input.shape[-1] != input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, "
            f"got {input.shape[-1]}"
        )


def _check_hidden(hx: Sequence[Tensor], groups: int, batch: int, w_hh: Tensor) -> None:
    if hx[0].dim() != 3 or hx[1].dim() != 3:
        raise IndexError(
            "hx and cx should be 3-D (num_layers * num_directions, batch, size) but got "
            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
        )
    hidden, out = w_hh.shape[0] // 4, w_hh.shape[1]
    for i, size in enumerate((out, hidden)):
        expected = (groups, batch, size)
        if hx[i].shape != expected:
            raise RuntimeError(f"Expected hidden[{i}] size {expected}, got {list(hx[i].shape)}")
