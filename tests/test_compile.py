"""torch.compile and torch.export of models containing lstm_ext.LSTM.

Dynamo refuses to trace any nn.RNN/GRU/LSTM instance unless
torch._dynamo.config.allow_rnn is set (torch 2.14: an isinstance check when it
wraps the module), and lstm_ext.LSTM is an nn.LSTM. With the flag, which only
lifts that refusal, lstm_ext.LSTM compiles into one graph, packed input too,
where nn.LSTM still breaks the graph.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext
from compile_backend import BACKEND

allow_rnn = torch._dynamo.config.patch(allow_rnn=True)


class Tagger(nn.Module):
    """A model that feeds an LSTM packed sequences and reads its outputs."""

    def __init__(self, lstm_cls):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = lstm_cls(4, 6, num_layers=2, bidirectional=True, proj_size=3)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, (h_n, c_n) = self.lstm(x)
        data = out.data if isinstance(out, PackedSequence) else out
        return self.head(data).tanh().sum() + h_n.square().sum() + c_n.sum()


def _packed(T=6, B=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, 4, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    return pack_padded_sequence(x, lengths, enforce_sorted=False)


def _loss_and_grads(model, x):
    loss = model(x)
    return loss, *torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("packed", [True, False])
def test_fullgraph_matches_eager(packed):
    model = Tagger(lstm_ext.LSTM)
    x = _packed() if packed else torch.randn(6, 3, 4)
    torch._dynamo.reset()
    with allow_rnn:
        compiled = _loss_and_grads(torch.compile(model, fullgraph=True, backend=BACKEND), x)
    for a, b in zip(compiled, _loss_and_grads(model, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_nn_lstm_breaks_the_graph_where_lstm_ext_does_not():
    """On packed input nn.LSTM cannot be captured whole (it reads data-dependent
    sizes); lstm_ext.LSTM can."""
    x = _packed()
    torch._dynamo.reset()
    with allow_rnn, pytest.raises(torch._dynamo.exc.UserError, match="data-dependent"):
        torch.compile(Tagger(nn.LSTM), fullgraph=True, backend=BACKEND)(x)
    torch._dynamo.reset()
    with allow_rnn:
        torch.compile(Tagger(lstm_ext.LSTM), fullgraph=True, backend=BACKEND)(x)


def test_dynamic_shapes_do_not_recompile():
    model = Tagger(lstm_ext.LSTM)
    torch._dynamo.reset()
    with allow_rnn:
        compiled = torch.compile(model, dynamic=True, fullgraph=True, backend=BACKEND)
        compiled(torch.randn(6, 3, 4))
        # After the first compile, any recompile raises.
        with torch.compiler.set_stance("fail_on_recompile"):
            for T, B in [(9, 3), (9, 5), (4, 2)]:
                x = torch.randn(T, B, 4)
                torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# nn.LSTM.forward (and so ours) refreshes _flat_weights, which export reports.
@pytest.mark.filterwarnings("ignore:The tensor attributes self.lstm._flat_weights")
@pytest.mark.parametrize("packed", [True, False])
def test_export(packed):
    model = Tagger(lstm_ext.LSTM)
    x = _packed() if packed else torch.randn(6, 3, 4)
    with allow_rnn:
        exported = torch.export.export(model, (x,))
    ops = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert torch.ops.lstm_ext.lstm_layer.default in ops
    # New values in the exported shapes (export specialises on the packed layout).
    other = x._replace(data=torch.randn_like(x.data)) if packed else torch.randn(6, 3, 4)
    torch.testing.assert_close(exported.module()(other), model(other), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The tensor attributes self.lstm._flat_weights")
def test_export_without_grad_carries_the_inference_op():
    """An eval model exported for inference runs the op that saves nothing."""
    model = Tagger(lstm_ext.LSTM).eval()
    x = torch.randn(6, 3, 4)
    with allow_rnn, torch.no_grad():
        exported = torch.export.export(model, (x,))
    ops = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert torch.ops.lstm_ext.lstm_layer_inference.default in ops
    assert torch.ops.lstm_ext.lstm_layer.default not in ops
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_compile_without_grad_matches_eager():
    model = Tagger(lstm_ext.LSTM).eval()
    x = _packed()
    torch._dynamo.reset()
    with allow_rnn, torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
