"""torch.nn.LSTM and lstm_ext.LSTM built alike, loaded with the same state_dict
and run on the same inputs and output gradients, so tests can compare outputs,
final states and the gradient of every input and parameter."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext

INPUTS = ("padded", "packed", "sorted", "unbatched")  # packed: unsorted lengths


@dataclasses.dataclass(frozen=True)
class ModuleCase:
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj: int = 0
    input: str = "padded"
    hx: bool = True
    dropout: float = 0.0
    dtype: torch.dtype = torch.float64
    T: int = 5
    B: int = 3
    I: int = 4  # noqa: E741
    H: int = 6

    def __str__(self):
        flags = [f"L{self.layers}", self.input, str(self.dtype)[6:]]
        flags += ["bi"] * self.bidirectional + ["bf"] * self.batch_first
        flags += ["nobias"] * (not self.bias) + [f"P{self.proj}"] * bool(self.proj)
        flags += ["hx"] * self.hx + [f"drop{self.dropout}"] * bool(self.dropout)
        return "-".join(flags)

    def kwargs(self) -> dict:
        return dict(
            input_size=self.I, hidden_size=self.H, num_layers=self.layers, bias=self.bias,
            batch_first=self.batch_first, dropout=self.dropout,
            bidirectional=self.bidirectional, proj_size=self.proj,
        )


def twins(case: ModuleCase, dtype: torch.dtype | None = None):
    """(nn.LSTM, lstm_ext.LSTM) with the same parameters, in `dtype` (default: the case's)."""
    torch.manual_seed(0)
    ref = nn.LSTM(**case.kwargs(), dtype=torch.float64)
    ours = lstm_ext.LSTM(**case.kwargs(), dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    dtype = dtype or case.dtype
    return ref.to(dtype), ours.to(dtype)


@dataclasses.dataclass
class Run:
    output: torch.Tensor | PackedSequence  # as the module returned it
    h_n: torch.Tensor
    c_n: torch.Tensor
    grads: dict[str, torch.Tensor]  # "input", "h0", "c0" and every parameter's name

    @property
    def y(self) -> torch.Tensor:
        return self.output.data if isinstance(self.output, PackedSequence) else self.output


class ModuleProblem:
    """Inputs (float64 values that every dtype represents alike) and output gradients."""

    def __init__(self, case: ModuleCase, seed: int = 0):
        self.case = c = case
        gen = torch.Generator().manual_seed(seed)
        D, P = 2 if c.bidirectional else 1, c.proj or c.H
        batch = () if c.input == "unbatched" else (c.B,)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64).to(c.dtype)

        x_shape = (c.B, c.T) if c.batch_first else (c.T, c.B)
        self.x = randn(*(x_shape if batch else (c.T,)), c.I)
        self.h0 = randn(c.layers * D, *batch, P)
        self.c0 = randn(c.layers * D, *batch, c.H)
        lengths = torch.randint(1, c.T + 1, (c.B,), generator=gen)
        lengths[0] = c.T
        if c.input == "sorted":
            lengths = lengths.sort(descending=True).values
        self.lengths = lengths
        rows = int(lengths.sum())
        y_shape = {
            "padded": (*x_shape, D * P), "packed": (rows, D * P), "sorted": (rows, D * P),
            "unbatched": (c.T, D * P),
        }[c.input]
        self.dy = randn(*y_shape)
        self.dh = randn(*self.h0.shape)
        self.dc = randn(*self.c0.shape)

    def inputs(self, dtype: torch.dtype | None = None):
        """Fresh leaves x, h0, c0 (in `dtype` if given), and the module's input made of x."""
        c = self.case
        x, h0, c0 = (t.to(dtype or c.dtype).requires_grad_() for t in (self.x, self.h0, self.c0))
        if c.input in ("packed", "sorted"):
            input = pack_padded_sequence(
                x, self.lengths, batch_first=c.batch_first, enforce_sorted=c.input == "sorted"
            )
        else:
            input = x
        return x, h0, c0, input

    def run(self, module: nn.LSTM, dtype: torch.dtype | None = None) -> Run:
        """Forward and backward through `module` (inputs cast to `dtype` if given)."""
        c = self.case
        x, h0, c0, input = self.inputs(dtype)
        output, (h_n, c_n) = module(input, (h0, c0) if c.hx else None)
        y = output.data if isinstance(output, PackedSequence) else output
        loss = sum(
            (a * b.to(a.dtype)).sum() for a, b in ((y, self.dy), (h_n, self.dh), (c_n, self.dc))
        )
        leaves = {"input": x, **({"h0": h0, "c0": c0} if c.hx else {})}
        leaves.update(module.named_parameters())
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return Run(output, h_n, c_n, dict(zip(leaves, grads)))


def assert_same_results(ours: Run, theirs: Run, **tol):
    """Same types, shapes, strides and packing; values and every gradient to `tol`."""
    assert type(ours.output) is type(theirs.output)
    if isinstance(theirs.output, PackedSequence):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, b = getattr(ours.output, field), getattr(theirs.output, field)
            assert (a is None and b is None) or torch.equal(a, b), field
    for name in ("y", "h_n", "c_n"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and a.stride() == b.stride(), name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")
    assert ours.grads.keys() == theirs.grads.keys()
    for name, b in theirs.grads.items():
        torch.testing.assert_close(
            ours.grads[name], b, **tol, msg=lambda m, name=name: f"grad of {name}: {m}"
        )
