"""Repeated runs give bitwise-identical results, also under
torch.use_deterministic_algorithms(True): no atomics, no order that depends on
timing (the CPU threads split the batch or the hidden units in a way fixed by
the shape and thread count, and every sum has a fixed order)."""

import pytest
import torch

import lstm_ext
from cpu_split import SEQUENCES, UNITS, cpu_split


def _run(x, weights, batch_sizes, zoneout=(), layer_norm=None):
    y, (h_n, c_n) = lstm_ext.lstm_layer(x, None, *weights, batch_sizes=batch_sizes, reverse=True,
                                        **dict(zip(("zoneout_cell", "zoneout_hidden"), zoneout)),
                                        layer_norm=layer_norm)
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + h_n.sum() + c_n.square().sum()
    return [y, h_n, c_n, *torch.autograd.grad(loss, [x, *weights, *(layer_norm or ())])]


@pytest.mark.parametrize("zoneout, proj, layer_norm", [(False, 48, False), (True, 48, False),
                                                      (True, 0, False), (True, 48, True)],
                         ids=["plain", "zoneout", "zoneout-no-proj", "zoneout-layer-norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("split, hidden, sizes", [
    (SEQUENCES, 96, [40] * 10 + [31] * 10 + [7] * 5),
    # The other way the CPU shares a step: by hidden units, a barrier per phase.
    (UNITS, 160, [4] * 10 + [3] * 10 + [1] * 5),
], ids=["sequences", "units"])
def test_bitwise_identical_runs(split, hidden, sizes, dtype, zoneout, proj, layer_norm):
    """bfloat16 and float16: on the native path where the CPU has it; with
    zoneout's weights given, its passes too (without a projection, dL/dh̃ has
    its own buffer)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(64, hidden, proj_size=proj, dtype=dtype)
    weights = list(lstm.parameters())
    batch_sizes = torch.tensor(sizes)
    rows = int(batch_sizes.sum())
    x = torch.randn(rows, 64, dtype=dtype, requires_grad=True)
    weights_d = (torch.rand(rows, hidden).lt(0.3).to(dtype),
                 torch.rand(rows, proj or hidden).lt(0.3).to(dtype))
    zoneout = weights_d if zoneout else ()
    ln = [(torch.rand(n) + 0.5).to(dtype).requires_grad_()
          for n in (4 * hidden, 4 * hidden, hidden, hidden)] if layer_norm else None
    with cpu_split(split):
        first = _run(x, weights, batch_sizes, zoneout, ln)
        torch.use_deterministic_algorithms(True)
        try:
            for _ in range(3):
                for a, b in zip(_run(x, weights, batch_sizes, zoneout, ln), first):
                    assert torch.equal(a, b)
        finally:
            torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T, B, H, P", [(30, 24, 96, 48), (1, 1, 512, 0)],
                         ids=["sequence", "decode step"])
def test_bitwise_identical_inference_runs(T, B, H, P, dtype):
    """The first call lays the weights out, the next ones use the kept layouts;
    a decode step's 2-4 MB of W_hh splits between the threads."""
    torch.manual_seed(0)
    lstm = lstm_ext.LSTM(64, H, num_layers=2, bidirectional=True, proj_size=P).to(dtype)
    x = torch.randn(T, B, 64, dtype=dtype)
    hx = (torch.randn(4, B, P or H, dtype=dtype), torch.randn(4, B, H, dtype=dtype))
    with torch.no_grad():
        first = lstm(x, hx)
        for _ in range(3):
            again = lstm(x, hx)
            for a, b in zip((first[0], *first[1]), (again[0], *again[1])):
                assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [SEQUENCES, UNITS], ids=["sequences", "units"])
def test_bitwise_identical_per_sample_gradients(split, dtype):
    """The backward op with one problem per sequence of a packed batch of
    unequal lengths (lstm_ext.opacus's per-sample gradients)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 130, proj_size=24, dtype=dtype)
    batch_sizes = torch.tensor([6] * 5 + [4] * 3 + [1] * 2)
    x = torch.randn(int(batch_sizes.sum()), 16, dtype=dtype)
    h0, c0 = torch.zeros(6, 24, dtype=dtype), torch.zeros(6, 130, dtype=dtype)
    w_ih, w_hh, b_ih, b_hh, w_hr = (w.detach() for w in lstm.parameters())
    ops = torch.ops.lstm_ext
    with cpu_split(split):
        y, _, _, gates, cells = ops.lstm_layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                               w_hr, True)
        dy = torch.randn_like(y)

        def run():
            return ops.lstm_layer_backward(dy, None, None, x, batch_sizes, h0, c0, w_ih, w_hh,
                                           w_hr, y, gates, cells, True, [True] * 4, 6)

        first = run()
        torch.use_deterministic_algorithms(True)
        try:
            for _ in range(3):
                for a, b in zip(run(), first):
                    assert (a is None and b is None) or torch.equal(a, b)
        finally:
            torch.use_deterministic_algorithms(False)
