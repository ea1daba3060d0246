"""lstm_ext.lstm, the functional form, on weights held outside any module."""

import re

import pytest
import torch
from torch import nn

import lstm_ext
from cpu_native import reduced_path

L, D, T, B, I, H = 2, 2, 4, 3, 5, 6


def reference(**kwargs):
    torch.manual_seed(0)
    return nn.LSTM(I, H, **(dict(num_layers=L, bidirectional=True) | kwargs)).double()


@pytest.fixture
def weights():
    return [w.detach() for w in reference()._flat_weights]


def zeros(*shape):
    return torch.zeros(*shape, dtype=torch.float64)


def run(x, hx, weights, **kwargs):
    return lstm_ext.lstm(x, hx, weights, num_layers=L, bidirectional=True, **kwargs)


@pytest.mark.parametrize("packed", [False, True])
def test_matches_nn_lstm_on_its_weights(packed):
    ref = reference(proj_size=3, batch_first=True)
    gen = torch.Generator().manual_seed(1)
    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    x_shape = (int(batch_sizes.sum()), I) if packed else (B, T, I)
    x = torch.randn(*x_shape, generator=gen, dtype=torch.float64)
    hx = (torch.randn(L * D, B, 3, generator=gen, dtype=x.dtype),
          torch.randn(L * D, B, H, generator=gen, dtype=x.dtype))
    got = lstm_ext.lstm(x, hx, ref._flat_weights, num_layers=L, bidirectional=True,
                        batch_first=True, batch_sizes=batch_sizes)
    out, states = ref(nn.utils.rnn.PackedSequence(x, batch_sizes) if packed else x, hx)
    expected = (out.data if packed else out, *states)
    for a, b in zip((got[0], *got[1]), expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_hx_none_is_zeros(weights):
    x = torch.randn(T, B, I, dtype=torch.float64)
    y0, (h0, c0) = run(x, None, weights)
    y1, (h1, c1) = run(x, (zeros(L * D, B, H), zeros(L * D, B, H)), weights)
    assert torch.equal(y0, y1) and torch.equal(h0, h1) and torch.equal(c0, c1)


def test_batch_first_is_for_padded_input_only(weights):
    data = torch.randn(7, I, dtype=torch.float64)
    batch_sizes = torch.tensor([3, 2, 1, 1])
    y0, _ = run(data, None, weights, batch_sizes=batch_sizes)
    y1, _ = run(data, None, weights, batch_sizes=batch_sizes, batch_first=True)
    assert torch.equal(y0, y1)


def test_dropout_only_when_training(weights):
    x = torch.randn(T, B, I, dtype=torch.float64)
    plain, _ = run(x, None, weights)
    assert torch.equal(run(x, None, weights, dropout=0.5, training=False)[0], plain)
    assert not torch.equal(run(x, None, weights, dropout=0.5)[0], plain)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_layers=3), RuntimeError, "expected 4 weights (5 with a projection) for each "
         "of 6 layers and directions, got 16 weights"),
        (dict(bias=False), RuntimeError, "expected 2 weights (3 with a projection)"),
        (dict(hx=(zeros(B, H), zeros(B, H))), IndexError, "hx and cx should be 3-D"),
        (dict(hx=(zeros(L * D, B, H),) * 3), RuntimeError, "lstm expects two hidden"),
        (dict(x=torch.randn(T, B, I, dtype=torch.float32)), RuntimeError,
         "Input and parameter tensors are not the same dtype"),
        (dict(x=torch.randn(T, I)), RuntimeError, "input must have 3 dimensions, got 2"),
    ],
    ids=["layers", "bias", "hx 2-D", "three states", "dtype", "unbatched"],
)
def test_bad_arguments_raise_before_any_work(weights, kwargs, error, message, monkeypatch):
    monkeypatch.setattr(lstm_ext._ops, "lstm_layer", None)  # calling it would be a TypeError
    args = dict(x=torch.randn(T, B, I, dtype=torch.float64), hx=None)
    args.update({k: kwargs.pop(k) for k in ("x", "hx") if k in kwargs})
    options = dict(num_layers=L, bidirectional=True) | kwargs
    with pytest.raises(error, match=re.escape(message)):
        lstm_ext.lstm(args["x"], args["hx"], weights, **options)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("packed", [False, True])
def test_reduced_precision_layer_is_the_float32_layer_rounded(dtype, packed):
    """On the upcast path, bfloat16/float16 run the float32 op on the exactly upcast
    values and round its results once: float32 accumulation and cell state
    throughout the layer (the native path: tests/test_cpu_native.py)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, I) if packed else (T, B, I), (B, 3), (B, H), (4 * H, I), (4 * H, 3),
              (4 * H,), (4 * H,), (3, H)]
    args = [torch.randn(*s, generator=gen).to(dtype) for s in shapes]
    batch_sizes = torch.tensor([3, 2, 1, 1]) if packed else None

    def layer(x, h0, c0, *w):
        return lstm_ext.lstm_layer(x, (h0, c0), *w, batch_sizes=batch_sizes, reverse=True)

    with reduced_path("upcast"):
        y, (h_n, c_n) = layer(*args)
    y32, (h32, c32) = layer(*(a.float() for a in args))
    for a, b in ((y, y32), (h_n, h32), (c_n, c32)):
        assert a.dtype == dtype and torch.equal(a, b.to(dtype))
