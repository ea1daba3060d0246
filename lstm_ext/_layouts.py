"""The weights' layouts an lstm_ext.LSTM keeps between inference calls.

Every call of the layer otherwise lays its weights out afresh for the
products (on the CPU: panels in the gate order, VNNI pairs for bfloat16;
16 MB a layer at H=1024), which costs a decode step (T=1) more than the step
itself. Where no derivative can be asked for, the module keeps, per layer and
direction, lstm_layer_lay_out's result with a fingerprint of what it was made
from: each weight's identity (held weakly), version counter, data pointer
(another storage: another dtype or device too), shape and strides, and the
CPU's 16-bit path (native or upcast). An optimizer step, an in-place edit,
load_state_dict (both bump the version counter), `.data` assignment (another
storage), `.to()`, `.half()`, a new Parameter, functional_call's weights,
parametrizations (other tensors) all change it, and the next call lays the
weights out again. Writes that escape autograd bump no version counter and
go unseen: an edit through `.data` (`w.data.add_(...)`), through a numpy or
DLPack view, by another process into shared memory, by a CUDA graph's
replay; call `flatten_parameters()` after one. A call that may be
differentiated (training) drops what is kept: its weights are about to
change. A replaced `.data` stays allocated until the next call replaces
its layout.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _ops
from ._checks import unpack_group


_PLAIN = (Tensor, torch.nn.Parameter)


def eager_inference(x: Tensor, hx: Sequence[Tensor], weights: Sequence[Tensor]) -> bool:
    """Whether the layers run the inference op eagerly on x, hx and these
    weights, as they are, with layouts that may be kept: nothing can ask for
    a derivative (grad mode off or nothing requiring grad; no forward-mode
    level), outside torch.compile, torch.jit.trace, torch.func transforms,
    autocast (which casts the weights) and CUDA graph capture (a graph would
    keep reading a layout the module may replace), on plain CPU or CUDA
    tensors (a FakeTensor has no data to lay out) and weights that are not
    inference tensors (they have no version counter)."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()
            or forward_ad._current_level >= 0 or type(x) not in _PLAIN
            or x.device.type not in ("cpu", "cuda") or torch.is_autocast_enabled(x.device.type)
            or (x.is_cuda and torch.cuda.is_current_stream_capturing())):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *hx, *weights)):
        return False
    return (all(type(t) in _PLAIN for t in hx)
            and all(type(w) in _PLAIN and not w.is_inference() for w in weights))


def _native(w: Tensor) -> bool:
    return (w.device.type == "cpu" and w.dtype in (torch.bfloat16, torch.float16)
            and torch.ops.lstm_ext.cpu_native(w.dtype))


def _fingerprint(group: Sequence[Tensor]) -> tuple:
    # Another dtype or device is another storage, so another data pointer.
    return (_native(group[0]), *((w._version, w.data_ptr(), w.shape, w.stride()) for w in group))


class KeptLayouts:
    """Per layer and direction (k), the layout of its weights, made again when
    they change. Entries are replaced whole, so threads calling one module at
    once each get a layout that matches the weights they saw."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}

    def get(self, k: int, group: Sequence[Tensor], bias: bool) -> tuple:
        """The layout for layer and direction k (lstm_layer_lay_out's four
        results), whose weights are `group` (with biases or not)."""
        fingerprint = _fingerprint(group)
        entry = self._entries.get(k)
        if (entry is None or entry[0] != fingerprint
                or any(ref() is not w for ref, w in zip(entry[1], group))):
            laid_out = _ops.lstm_layer_lay_out(*unpack_group(group, bias))
            # The storages are held, so that no storage of a later `.data`
            # assignment (which keeps the version counter) can take one of
            # their addresses while the fingerprint names it.
            storages = tuple(w.untyped_storage() for w in group)
            entry = (fingerprint, tuple(weakref.ref(w) for w in group), laid_out, storages)
            self._entries[k] = entry
        return entry[2]

    def get_all(self, weights: Sequence[Tensor], per_group: int, bias: bool) -> list:
        """Every layer's and direction's layout in a row, as lstm_inference takes them."""
        return [t for k in range(len(weights) // per_group)
                for t in self.get(k, weights[k * per_group : (k + 1) * per_group], bias)]

    def clear(self) -> None:
        self._entries.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self._entries.values()
                   for t in entry[2] if t is not None)
