"""The CPU executor's profile (csrc/cpu/profile.h), which benchmarks/phases.py
reads: off, it counts nothing; on, each kind of work counts its calls, its time
and exactly the flops of the layer's products and cell passes."""

import pytest
import torch

import lstm_ext

ops = torch.ops.lstm_ext


def counts(on: bool) -> dict[str, list[int]]:
    """Kind -> [ns, calls, flops] since the last read; the profile left on or off."""
    names, values = ops._cpu_profile(on)
    return dict(zip(names, values.tolist()))


@pytest.fixture
def layer():
    torch.manual_seed(0)
    T, B, I, H = 7, 5, 6, 32  # noqa: E741
    yield lstm_ext.LSTM(I, H), torch.randn(T, B, I, requires_grad=True), (T * B, I, H)
    counts(False)


def test_off_counts_nothing(layer):
    model, x, _ = layer
    counts(False)
    model(x)[0].sum().backward()
    assert all(v == [0, 0, 0] for v in counts(False).values())


def test_on_counts_each_phase_of_forward_and_backward(layer):
    model, x, (rows, I, H) = layer  # noqa: E741
    G = 4 * H
    counts(True)
    out = model(x)[0]
    forward = counts(True)
    out.sum().backward()
    backward = counts(False)
    assert forward["sequence_gemm"][2] == 2 * rows * G * I  # the input projection
    assert forward["step_gemm"][2] == 2 * rows * G * H  # h_{t-1} W_hh^T, h0 included
    assert forward["cell_forward"][2] == rows * H
    assert forward["layout"][1] == 2 and forward["weight_gemm"] == [0, 0, 0]
    assert backward["sequence_gemm"][2] == 2 * rows * G * I  # the input gradient
    assert backward["step_gemm"][2] == 2 * rows * G * H  # dL/dh_{t-1}
    assert backward["weight_gemm"][2] == 2 * rows * G * (I + H)
    assert backward["cell_backward"][2] == rows * H and backward["cell_forward"][1] == 0
    for kind in ("sequence_gemm", "step_gemm", "cell_forward", "time_loop"):
        assert forward[kind][0] > 0 and forward[kind][1] > 0


def test_repeated_products_add_up():
    """_cpu_product's repeat (phases.py times the products alone with it)."""
    a, b, c = torch.randn(5, 9), torch.randn(9, 70), torch.randn(5, 70)
    for kind in ("step", "sequence", "weight"):
        lhs = a.t().contiguous() if kind == "weight" else a
        torch.testing.assert_close(ops._cpu_product(lhs, b, kind, repeat=3), a @ b)
        torch.testing.assert_close(ops._cpu_product(lhs, b, kind, c, repeat=3), c + 3 * (a @ b))
    with pytest.raises(RuntimeError, match="repeat must be positive"):
        ops._cpu_product(a, b, "step", repeat=0)
