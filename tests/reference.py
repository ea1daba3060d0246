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

    def weight_names(self) -> list[str]:
        """This direction's parameters in lstm_layer's order: w_ih, w_hh, [b_ih, b_hh], [w_hr]."""
        suffix = "_l0_reverse" if self.case.reverse else "_l0"
        names = ["weight_ih", "weight_hh"] + ["bias_ih", "bias_hh"] * self.case.bias
        names += ["weight_hr"] * bool(self.case.proj)
        return [name + suffix for name in names]

    def weights(self) -> list[torch.Tensor]:
        return [getattr(self.lstm, name) for name in self.weight_names()]

    def leaves(self) -> list[torch.Tensor]:
        return [self.x, self.h0, self.c0, *self.weights()]

    def _loss(self, y, h_n, c_n) -> Run:
        loss = (y * self.dy).sum() + (h_n * self.dh).sum() + (c_n * self.dc).sum()
        return Run(y, h_n, c_n, loss)

    def _packing(self):
        """PackedSequence's fields for the case's lengths, its data as indices
        into the flattened (T * B) padded input: packing by indexing, which
        every autograd mode differentiates (pack_padded_sequence has no
        forward-mode derivative)."""
        c = self.case
        rows = torch.arange(c.T * c.B, dtype=torch.float64).view(c.T, c.B, 1)
        packed = pack_padded_sequence(rows, self.lengths, enforce_sorted=False)
        return packed._replace(data=packed.data.view(-1).long())

    def torch_fn(self):
        """(x, h0, c0, *weights) -> (y, h_n, c_n) of this direction, by nn.LSTM:
        x is padded (T, B, I), h0 and c0 (D, B, *), weights as in weights()."""
        d, c = self.direction, self.case
        P = c.proj or c.H
        names = self.weight_names()
        packing = self._packing() if c.packed else None

        def fn(x, h0, c0, *weights):
            input = x if packing is None else packing._replace(data=x.flatten(0, 1)[packing.data])
            out, (h_n, c_n) = torch.func.functional_call(
                self.lstm, dict(zip(names, weights)), (input, (h0, c0)))
            y = out if packing is None else out.data
            return y[..., d * P : (d + 1) * P], h_n[d], c_n[d]

        return fn

    def ours_fn(self, layer=lstm_ext.lstm_layer):
        """The same function by `layer`, which has lstm_ext.lstm_layer's
        signature (the emulated CUDA op plugs in here)."""
        d, c = self.direction, self.case
        packing = self._packing() if c.packed else None

        def fn(x, h0, c0, w_ih, w_hh, *rest):
            b_ih, b_hh = rest[:2] if c.bias else (None, None)
            w_hr = rest[-1] if c.proj else None
            h0, c0 = h0[d], c0[d]
            if packing is None:
                y, (h_n, c_n) = layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr,
                                      reverse=c.reverse)
                return y, h_n, c_n
            order, unorder = packing.sorted_indices, packing.unsorted_indices
            y, (h_n, c_n) = layer(
                x.flatten(0, 1)[packing.data], (h0[order], c0[order]), w_ih, w_hh, b_ih, b_hh,
                w_hr, batch_sizes=packing.batch_sizes, reverse=c.reverse,
            )
            return y, h_n[unorder], c_n[unorder]

        return fn

    def run_torch(self) -> Run:
        return self._loss(*self.torch_fn()(*self.leaves()))

    def run_ours(self, layer=lstm_ext.lstm_layer) -> Run:
        """`layer` has lstm_ext.lstm_layer's signature (the emulated CUDA op plugs in here)."""
        return self._loss(*self.ours_fn(layer)(*self.leaves()))


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
