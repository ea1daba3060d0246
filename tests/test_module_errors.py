"""Bad arguments: lstm_ext.LSTM raises what torch.nn.LSTM raises, before the op runs.

Where nn.LSTM checks an argument itself (its Python forward, and ATen's checks in
torch.lstm), type and message must be the same. For PackedSequence input nn.LSTM
checks nothing: a bad one fails inside whichever kernel meets it first ("mat1 and
mat2 shapes cannot be multiplied", a broadcast, an index), and for a wrong hx/cx
dtype so does padded input. There the exception type must be the same, and the
message is the one nn.LSTM gives for the same mistake where it does check.
"""

import dataclasses
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext
from lstm_ext import _ops
from module_reference import ModuleCase, twins

T, B, I, H, P = 3, 2, 4, 5, 3
CASE = ModuleCase(layers=2, bidirectional=True, dtype=torch.float32, T=T, B=B, I=I, H=H)
BATCH_FIRST = dataclasses.replace(CASE, batch_first=True)
PROJ = dataclasses.replace(CASE, proj=P)


def randn(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype).to(device)


def states(groups=4, batch=(B,), size=H, cell_size=H, dtype=torch.float32, cell_dtype=None):
    h0 = randn(groups, *batch, size, dtype=dtype)
    return h0, randn(groups, *batch, cell_size, dtype=cell_dtype or dtype)


def packed(lengths=(3, 2), sorted=True, size=I, dtype=torch.float32, device="cpu"):
    x = randn(T, B, size, dtype=dtype, device=device)
    return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=sorted)


@dataclasses.dataclass
class Bad:
    name: str
    args: object  # () -> (input, hx)
    case: ModuleCase = CASE
    ours: tuple[type, str] | None = None  # where only the type is nn.LSTM's: ours, exactly

    def __str__(self):
        return self.name


SAME = [
    Bad("input 4-D", lambda: (randn(1, T, B, I), None)),
    Bad("input 1-D", lambda: (randn(I), None)),
    Bad("input_size", lambda: (randn(T, B, I + 1), None)),
    Bad("input_size with hx", lambda: (randn(T, B, I + 1), states())),
    Bad("input_size unbatched", lambda: (randn(T, I + 1), None)),
    Bad("input float64", lambda: (randn(T, B, I, dtype=torch.float64), None)),
    Bad("input float64 with hx", lambda: (randn(T, B, I, dtype=torch.float64), states())),
    Bad("input int64", lambda: (torch.zeros(T, B, I, dtype=torch.int64), None)),
    Bad("input bfloat16", lambda: (randn(T, B, I, dtype=torch.bfloat16), None)),
    Bad("hx 2-D", lambda: (randn(T, B, I), (states()[0][0], states()[1]))),
    Bad("cx 2-D", lambda: (randn(T, B, I), (states()[0], states()[1][0]))),
    Bad("hx one tensor", lambda: (randn(T, B, I), states()[0])),
    Bad("hx 3-D unbatched", lambda: (randn(T, I), states())),
    Bad("hx size", lambda: (randn(T, B, I), states(size=H + 1))),
    Bad("cx size", lambda: (randn(T, B, I), states(cell_size=H - 1))),
    Bad("hx batch", lambda: (randn(T, B, I), states(batch=(B + 1,)))),
    Bad("hx layers", lambda: (randn(T, B, I), states(groups=2))),
    Bad("hx batch, batch_first", lambda: (randn(B, T, I), states(batch=(T,))), BATCH_FIRST),
    Bad("hx size unbatched", lambda: (randn(T, I), states(batch=(), size=H - 1))),
    Bad("hx of hidden_size with proj_size", lambda: (randn(T, B, I), states()), PROJ),
    Bad("three states", lambda: (randn(T, B, I), (*states(), states()[1]))),
    Bad("no steps", lambda: (randn(0, B, I), None)),
    Bad("no steps, batch_first", lambda: (randn(B, 0, I), None), BATCH_FIRST),
    Bad("no steps unbatched", lambda: (randn(0, I), None)),
    Bad("input on meta", lambda: (randn(T, B, I, device="meta"), None)),
    Bad("hx on meta", lambda: (randn(T, B, I), tuple(s.to("meta") for s in states()))),
    # nn.LSTM's own permute_hidden (an index_select) fails, for both alike.
    Bad("packed unsorted, hx batch short",
        lambda: (packed((2, 3), sorted=False), states(batch=(1,)))),
]

SAME_TYPE = [
    Bad("h0 float64",
        lambda: (randn(T, B, I), states(dtype=torch.float64, cell_dtype=torch.float32)),
        ours=(RuntimeError, "Input and hidden tensors are not the same dtype, found input tensor "
              "with torch.float32 and hidden tensor with torch.float64")),
    Bad("c0 float64", lambda: (randn(T, B, I), states(cell_dtype=torch.float64)),
        ours=(RuntimeError, "Input and hidden tensors are not the same dtype")),
    Bad("h0 float64 with proj_size",
        lambda: (randn(T, B, I), states(size=P, dtype=torch.float64, cell_dtype=torch.float32)),
        PROJ, ours=(RuntimeError, "Input and hidden tensors are not the same dtype")),
    Bad("packed input_size", lambda: (packed(size=I + 1), None),
        ours=(RuntimeError, "input.size(-1) must be equal to input_size. Expected 4, got 5")),
    Bad("packed input float64", lambda: (packed(dtype=torch.float64), None),
        ours=(RuntimeError, "Input and parameter tensors are not the same dtype, found input "
              "tensor with torch.float64 and parameter tensor with torch.float32")),
    Bad("packed h0 float64",
        lambda: (packed(), states(dtype=torch.float64, cell_dtype=torch.float32)),
        ours=(RuntimeError, "Input and hidden tensors are not the same dtype")),
    Bad("packed hx size", lambda: (packed(), states(size=H + 1)),
        ours=(RuntimeError, "Expected hidden[0] size (4, 2, 5), got [4, 2, 6]")),
    Bad("packed cx size", lambda: (packed(), states(cell_size=H + 1)),
        ours=(RuntimeError, "Expected hidden[1] size (4, 2, 5), got [4, 2, 6]")),
    Bad("packed cx size with proj_size", lambda: (packed(), states(size=P, cell_size=H + 1)),
        PROJ, ours=(RuntimeError, "Expected hidden[1] size (4, 2, 5), got [4, 2, 6]")),
    Bad("packed hx batch", lambda: (packed(), states(batch=(B + 1,))),
        ours=(RuntimeError, "Expected hidden[0] size (4, 2, 5), got [4, 3, 5]")),
    Bad("packed hx layers", lambda: (packed(), states(groups=2)),
        ours=(RuntimeError, "Expected hidden[0] size (4, 2, 5), got [2, 2, 5]")),
    Bad("packed hx 2-D", lambda: (packed(), (states()[0][0], states()[1])),
        ours=(IndexError, "hx and cx should be 3-D (num_layers * num_directions, batch, size) "
              "but got (2-D, 3-D) tensors")),
    Bad("packed unsorted cx 2-D",
        lambda: (packed((2, 3), sorted=False), (states()[0], states()[1][0])),
        ours=(IndexError, "hx and cx should be 3-D")),
    Bad("packed on meta", lambda: (packed(device="meta"), None),
        ours=(RuntimeError, "Input and parameter tensors are not at the same device, found "
              "input tensor at meta and parameter tensor at cpu")),
]


@pytest.fixture
def op_refuses(monkeypatch):
    """Fails the test if the op is reached: every check must come first."""

    def refuse(*args):
        raise AssertionError("lstm_layer ran before the arguments were checked")

    monkeypatch.setattr(_ops, "lstm_layer", refuse)


def raised(module, args):
    torch.manual_seed(0)
    with pytest.raises(Exception) as info:
        module(*args())
    return info.value


@pytest.mark.parametrize("bad", SAME, ids=str)
def test_same_exception_and_message(bad, op_refuses):
    ref, ours = twins(bad.case)
    expected, got = raised(ref, bad.args), raised(ours, bad.args)
    assert type(got) is type(expected)
    assert str(got) == str(expected)


@pytest.mark.parametrize("bad", SAME_TYPE, ids=str)
def test_same_exception_type(bad, op_refuses):
    ref, ours = twins(bad.case)
    expected, got = raised(ref, bad.args), raised(ours, bad.args)
    assert type(got) is type(expected) is bad.ours[0]
    assert re.match(re.escape(bad.ours[1]), str(got))


def test_packed_hx_of_four_dimensions_raises(op_refuses):
    # nn.LSTM crashes the process on this one (segmentation fault), so it is not run.
    _, ours = twins(CASE)
    with pytest.raises(IndexError, match=re.escape("but got (4-D, 4-D) tensors")):
        ours(packed(), tuple(s[None] for s in states()))


CONSTRUCTOR = [
    dict(dropout=1.5), dict(dropout=-0.1), dict(dropout=True), dict(dropout="0.5"),
    dict(hidden_size=0), dict(hidden_size=-2), dict(hidden_size=2.5), dict(input_size=0),
    dict(input_size=1.5), dict(num_layers=0), dict(proj_size=-1), dict(proj_size=H),
    dict(proj_size=H + 1), dict(bias="yes"), dict(batch_first=1),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR, ids=lambda kw: ",".join(map(repr, kw.items())))
def test_constructor_errors_are_nn_lstms(kwargs):
    args = dict(input_size=I, hidden_size=H) | kwargs
    with pytest.raises(Exception) as expected:
        nn.LSTM(**args)
    with pytest.raises(type(expected.value), match=f"^{re.escape(str(expected.value))}$"):
        lstm_ext.LSTM(**args)


def test_constructor_warns_as_nn_lstm():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nn.LSTM(I, H, dropout=0.5)
        lstm_ext.LSTM(I, H, dropout=0.5)
    assert len(caught) == 2 and str(caught[0].message) == str(caught[1].message)
