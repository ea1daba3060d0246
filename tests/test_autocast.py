"""torch.autocast: the layer runs in autocast's dtype, as nn.LSTM does."""

import pytest
import torch

import lstm_ext

# bfloat16 keeps 8 bits of mantissa: nn.LSTM under autocast multiplies in
# bfloat16 (oneDNN), lstm_ext rounds the operands to bfloat16 and computes in
# float; outputs of size ~1 then differ by a few bfloat16 units.
BF16_TOLERANCE = dict(rtol=2e-2, atol=2e-2)


def test_matches_nn_lstm_under_cpu_autocast():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 16)
    x = torch.randn(12, 4, 8, requires_grad=True)
    results = []
    for run in (lambda: lstm(x), lambda: lstm_ext.lstm_layer(x, None, *lstm.parameters())):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (h_n, c_n) = run()
        assert y.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
        loss = y.float().square().sum() + h_n.float().sum()
        grads = torch.autograd.grad(loss, [x, *lstm.parameters()])
        assert all(g.dtype == torch.float32 for g in grads)
        results.append((y.float(), h_n.float().view(4, 16), c_n.float().view(4, 16), *grads))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, **BF16_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_in_the_autocast_dtype(dtype):
    """float16 too, which nn.LSTM under CPU autocast cannot run."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 16, proj_size=4)
    x = torch.randn(12, 4, 8)
    with torch.autocast("cpu", dtype=dtype):
        y, (h_n, c_n) = lstm_ext.lstm_layer(x, None, *lstm.parameters())
    expected, _ = lstm_ext.lstm_layer(x.to(dtype), None, *(p.to(dtype) for p in lstm.parameters()))
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
