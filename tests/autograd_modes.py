"""Helpers for the autograd-mode tests: which route a derivative took, and
central finite differences."""

from __future__ import annotations

import contextlib
from unittest import mock

import torch

from lstm_ext import _composite, _vmap


@contextlib.contextmanager
def fused_only():
    """Fails the test if any derivative comes from the composite layer
    (lstm_ext/_composite.py) instead of the fused ops."""
    with contextlib.ExitStack() as stack:
        for name in ("vjp", "jvp", "tangent_vjp"):
            stack.enter_context(mock.patch.object(
                _composite, name, side_effect=AssertionError(f"composite {name} was used")))
        yield


@contextlib.contextmanager
def no_vmap_loops():
    """Fails the test if a batching rule runs the op once per mapped element
    instead of folding the mapped dimension into the batch."""
    with mock.patch.object(_vmap, "_loop", side_effect=AssertionError("vmap ran a loop")):
        yield


def central_differences(fn, primals, tangents, eps=1e-6):
    """(fn(p + eps t) - fn(p - eps t)) / (2 eps) for each output of fn."""
    with torch.no_grad():
        plus = fn(*(p + eps * t for p, t in zip(primals, tangents)))
        minus = fn(*(p - eps * t for p, t in zip(primals, tangents)))
    return tuple((a - b) / (2 * eps) for a, b in zip(plus, minus))
