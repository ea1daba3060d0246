"""Profiler ranges: each layer and direction of the stack named, only while a
profiler runs, and no graph break under torch.compile."""

import pytest
import torch
from torch.profiler import profile

import lstm_ext
from compile_backend import BACKEND

LABELS = ["lstm_ext.lstm layer 0", "lstm_ext.lstm layer 0 reverse",
          "lstm_ext.lstm layer 1", "lstm_ext.lstm layer 1 reverse"]


def model():
    torch.manual_seed(0)
    return lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)


def test_each_layer_and_direction_is_a_range_around_its_op():
    lstm, x = model(), torch.randn(5, 3, 4, requires_grad=True)
    with profile() as prof:
        y, _ = lstm(x)
        y.sum().backward()
    events = [e for e in prof.events() if e.name in LABELS]
    assert [e.name for e in events] == LABELS
    ops = [e for e in prof.events() if e.name == "lstm_ext::lstm_layer"]
    for event in events:
        inside = [op for op in ops if event.time_range.start <= op.time_range.start
                  and op.time_range.end <= event.time_range.end]
        assert inside, f"no lstm_ext::lstm_layer inside {event.name}"


def test_the_stack_op_opens_the_same_ranges():
    """Without grad the module's stack is one op (lstm_inference), which names
    each layer and direction as the layer-by-layer path does."""
    lstm, x = model(), torch.randn(5, 3, 4)
    with torch.no_grad():
        lstm(x)
        with profile() as prof:
            lstm(x)
    events = [e for e in prof.events() if e.name in LABELS]
    assert [e.name for e in events] == LABELS
    (op,) = [e for e in prof.events() if e.name == "lstm_ext::lstm_inference"]
    for event in events:
        assert op.time_range.start <= event.time_range.start
        assert event.time_range.end <= op.time_range.end


def test_no_range_without_a_profiler(monkeypatch):
    """Entering a range costs a dispatcher call even with no profiler to see it."""
    def refuse(name):
        raise AssertionError(f"range {name!r} entered with no profiler running")

    monkeypatch.setattr(torch.autograd.profiler, "record_function", refuse)
    y, _ = model()(torch.randn(5, 3, 4))
    assert y.shape == (5, 3, 6)


@pytest.mark.parametrize("profiled", [False, True])
def test_compiles_to_one_graph(profiled):
    """Under a profiler the ranges are traced too (as nothing, by default, or as
    profiler ops in the graph): no graph break either way."""
    lstm, x = model(), torch.randn(5, 3, 4)
    expected = lstm(x)[0]
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(lstm, fullgraph=True, backend=BACKEND)
        if profiled:
            with profile():
                got = compiled(x)[0]
        else:
            got = compiled(x)[0]
    torch.testing.assert_close(got, expected)

