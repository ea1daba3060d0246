"""Resources at the edges: very long sequences, memory over many calls,
concurrent callers, sizes past 32-bit, and what is saved for backward."""

import gc
import os
import pathlib
import sys
import threading

import pytest
import torch

import lstm_ext
from lstm_ext import _ops

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import measure  # noqa: E402  (the benchmark's memory probes)

# AddressSanitizer's quarantine keeps up to 256 MB of freed memory resident: the
# resident-memory tests run in the other builds.
resident_memory = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                     reason="AddressSanitizer's quarantine keeps freed memory "
                                            "resident")


def test_sequence_longer_than_cudnn_allows():
    """T = 100,000 (cuDNN stops at 65,535): forward and backward match nn.LSTM."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4)
    x = torch.randn(100_000, 2, 3, requires_grad=True)
    weights = list(lstm.parameters())
    results = []
    for run in (lambda: lstm(x), lambda: lstm_ext.lstm_layer(x, None, *weights)):
        y, (h_n, c_n) = run()
        h_n, c_n = h_n.view(2, 4), c_n.view(2, 4)
        loss = y.sum() + h_n.sum() + c_n.sum()
        results.append((y, h_n, c_n, *torch.autograd.grad(loss, [x, *weights])))
    for ours, theirs in zip(*results):
        # Weight gradients sum 200,000 terms in float32.
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@resident_memory
def test_memory_stays_flat_over_10000_calls():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, requires_grad=True)
    weights = [torch.randn(24, 5, requires_grad=True), torch.randn(24, 6, requires_grad=True)]
    batch_sizes = torch.tensor([3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1])

    def call():
        y, (h_n, c_n) = lstm_ext.lstm_layer(x.view(-1, 5)[:18], None, *weights,
                                            batch_sizes=batch_sizes, reverse=True)
        (y.sum() + h_n.sum() + c_n.sum()).backward()

    for _ in range(500):
        call()
    gc.collect()
    before = measure.rss_bytes()
    for _ in range(10_000):
        call()
    gc.collect()
    grown = measure.rss_bytes() - before
    # A leak of even one small buffer per call would pass 10 MB.
    assert grown < 10 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"


def test_concurrent_callers_get_their_own_results():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 7, proj_size=3)
    weights = list(lstm.parameters())
    inputs = [torch.randn(20, 5, 6, requires_grad=True) for _ in range(4)]

    def run(x):
        y, (h_n, c_n) = lstm_ext.lstm_layer(x, None, *weights, reverse=True)
        loss = y.square().sum() + h_n.sum() + c_n.sum()
        return (y.detach(), *torch.autograd.grad(loss, [x, *weights]))

    expected = [run(x) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def worker(i):
        try:
            for _ in range(20):
                results[i] = run(inputs[i])
                for a, b in zip(results[i], expected[i]):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        except Exception as e:  # noqa: BLE001 (reported below, on the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_dimensions_past_32_bits_are_rejected():
    """BLAS takes 32-bit sizes: a batch of 2^31 + 1 rows is refused before any
    memory is touched (the operands are stride-0 views)."""
    rows, hidden = 2**31 + 1, 2
    x = torch.zeros(1, 1).expand(rows, 1)
    state = torch.zeros(1, hidden).expand(rows, hidden)
    weights = torch.zeros(4 * hidden, 1), torch.zeros(4 * hidden, hidden)
    batch_sizes = torch.tensor([rows])
    with pytest.raises(RuntimeError, match="dimension 2147483649 exceeds the BLAS limit"):
        _ops.lstm_layer(x, batch_sizes, state, state, *weights, None, None, None, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_for_backward_is_5h_per_row(dtype):
    """Beyond references to its inputs and outputs, autograd keeps the
    activated gates (4H) and the cell state (H) of every packed row, in float
    for bfloat16 inputs: 5 * H * rows values."""
    rows, hidden = 18, 7
    x = torch.randn(rows, 5, dtype=dtype, requires_grad=True)
    h0 = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    c0 = torch.randn(4, hidden, dtype=dtype, requires_grad=True)
    weights = [torch.randn(4 * hidden, 5, dtype=dtype, requires_grad=True),
               torch.randn(4 * hidden, 3, dtype=dtype, requires_grad=True),
               torch.randn(3, hidden, dtype=dtype, requires_grad=True)]
    batch_sizes = torch.tensor([4, 4, 4, 3, 2, 1])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y, (h_n, c_n) = lstm_ext.lstm_layer(x, (h0, c0), *weights[:2], w_hr=weights[2],
                                            batch_sizes=batch_sizes)
    known = [x, h0, c0, *weights, y, batch_sizes]
    extra = [t for t in saved if not any(t is k or t.data_ptr() == k.data_ptr() for k in known)]
    assert sorted(tuple(t.shape) for t in extra) == [(rows, hidden), (rows, 4 * hidden)]
    assert all(t.dtype == torch.float32 or t.dtype == dtype for t in extra)
    assert sum(t.numel() for t in extra) == 5 * hidden * rows


@resident_memory
def test_inference_memory_grows_with_the_output_only():
    """Without grad nothing is kept per row but the output: from T=35 to T=350
    the peak grows by the output's growth and little else (training would add
    the gates and cells, 5H values per row: 36 MB here)."""
    torch.manual_seed(0)
    model = lstm_ext.LSTM(256, 256)
    peaks = []
    for T in (35, 350):
        x = torch.randn(T, 32, 256)
        with torch.no_grad():
            model(x)
            peaks.append(measure.peak_memory_bytes(lambda x=x: model(x)))
    output_growth = (350 - 35) * 32 * 256 * 4
    assert peaks[1] - peaks[0] < output_growth + 4 * 2**20, [p / 2**20 for p in peaks]
