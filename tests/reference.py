"""One LSTM layer run two ways, by torch.nn.LSTM and by lstm_ext, on the same
weights, inputs and output gradients, so tests can compare every result."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext


@dataclasses.dataclass(frozen=True)
class Case:
    T: int = 5
    B: int = 3
    I: int = 4  # noqa: E741
    H: int = 6
    proj: int = 0
    bias: bool = True
    reverse: bool = False
    packed: bool = False  # random unsorted lengths in [1, T], one of them T
    dtype: torch.dtype = torch.float64

    def __str__(self):
        flags = [f"T{self.T}B{self.B}I{self.I}H{self.H}"]
        flags += [f"P{self.proj}"] * bool(self.proj)
        flags += ["nobias"] * (not self.bias) + ["rev"] * self.reverse + ["packed"] * self.packed
        return "-".join(flags)


def in_both_directions_and_dtypes(shapes: list[Case]) -> list[Case]:
    """Each shape forward and reverse, in float64 and float32."""
    return [
        dataclasses.replace(case, reverse=reverse, dtype=dtype)
        for case in shapes
        for reverse in (False, True)
        for dtype in (torch.float64, torch.float32)
    ]


@dataclasses.dataclass
class Run:
    """Outputs, in a layout both implementations share, and the loss to differentiate."""

    y: torch.Tensor  # (T, B, P) padded, or the packed data (rows, P)
    h_n: torch.Tensor  # (B, P), original batch order
    c_n: torch.Tensor  # (B, H)
    loss: torch.Tensor


class Problem:
    """A reference nn.LSTM (bidirectional when the case is reverse, so the
    reverse direction's `_reverse` weights exist), inputs and output gradients."""

    def __init__(self, case: Case, seed: int = 0):
        self.case = case
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.lstm = nn.LSTM(
            case.I, case.H, bias=case.bias, proj_size=case.proj, bidirectional=case.reverse
        ).to(case.dtype)
        P = case.proj or case.H
        D = 2 if case.reverse else 1

        def randn(*shape):
            return torch.randn(*shape, generator=gen, dtype=case.dtype).requires_grad_()

        self.x = randn(case.T, case.B, case.I)
        self.h0 = randn(D, case.B, P)
        self.c0 = randn(D, case.B, case.H)
        if case.packed:
            lengths = torch.randint(1, case.T + 1, (case.B,), generator=gen)
            lengths[torch.randint(0, case.B, (1,), generator=gen)] = case.T
        else:
            lengths = torch.full((case.B,), case.T)
        self.lengths = lengths
        rows = int(lengths.sum()) if case.packed else case.T * case.B
        y_shape = (rows, P) if case.packed else (case.T, case.B, P)
        self.dy = torch.randn(*y_shape, generator=gen, dtype=case.dtype)
        self.dh = torch.randn(case.B, P, generator=gen, dtype=case.dtype)
        self.dc = torch.randn(case.B, case.H, generator=gen, dtype=case.dtype)

    @property
    def direction(self) -> int:
        return 1 if self.case.reverse else 0

    def weights(self) -> list[torch.Tensor]:
        """This direction's parameters in lstm_layer's order: w_ih, w_hh, [b_ih, b_hh], [w_hr]."""
        suffix = "_l0_reverse" if self.case.reverse else "_l0"
        names = ["weight_ih", "weight_hh"] + ["bias_ih", "bias_hh"] * self.case.bias
        names += ["weight_hr"] * bool(self.case.proj)
        return [getattr(self.lstm, name + suffix) for name in names]

    def leaves(self) -> list[torch.Tensor]:
        return [self.x, self.h0, self.c0, *self.weights()]

    def _loss(self, y, h_n, c_n) -> Run:
        loss = (y * self.dy).sum() + (h_n * self.dh).sum() + (c_n * self.dc).sum()
        return Run(y, h_n, c_n, loss)

    def _input(self):
        if self.case.packed:
            return pack_padded_sequence(self.x, self.lengths, enforce_sorted=False)
        return self.x

    def run_torch(self) -> Run:
        d, P = self.direction, self.case.proj or self.case.H
        out, (h_n, c_n) = self.lstm(self._input(), (self.h0, self.c0))
        y = out.data if self.case.packed else out
        return self._loss(y[..., d * P : (d + 1) * P], h_n[d], c_n[d])

    def run_ours(self, layer=lstm_ext.lstm_layer) -> Run:
        """`layer` has lstm_ext.lstm_layer's signature (the emulated CUDA op plugs in here)."""
        d, c = self.direction, self.case
        w = self.weights()
        w_ih, w_hh = w[:2]
        b_ih, b_hh = w[2:4] if c.bias else (None, None)
        w_hr = w[-1] if c.proj else None
        h0, c0 = self.h0[d], self.c0[d]
        if not c.packed:
            y, (h_n, c_n) = layer(self.x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr, reverse=c.reverse)
            return self._loss(y, h_n, c_n)
        packed = self._input()
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        y, (h_n, c_n) = layer(
            packed.data, (h0[order], c0[order]), w_ih, w_hh, b_ih, b_hh, w_hr,
            batch_sizes=packed.batch_sizes, reverse=c.reverse,
        )
        return self._loss(y, h_n[unorder], c_n[unorder])


def tolerance(dtype: torch.dtype) -> dict:
    return {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}[dtype]


def assert_same(problem: Problem, ours: Run, theirs: Run):
    """Values, final states and the gradient of every leaf agree to the dtype's tolerance."""
    tol = tolerance(problem.case.dtype)
    torch.testing.assert_close(ours.y, theirs.y, **tol)
    torch.testing.assert_close(ours.h_n, theirs.h_n, **tol)
    torch.testing.assert_close(ours.c_n, theirs.c_n, **tol)
    leaves = problem.leaves()
    g_ours = torch.autograd.grad(ours.loss, leaves, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs.loss, leaves, allow_unused=True)
    names = ["x", "h0", "c0", *(f"weight[{i}]" for i in range(len(leaves) - 3))]
    for name, a, b in zip(names, g_ours, g_theirs):
        assert a is not None and b is not None, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")
