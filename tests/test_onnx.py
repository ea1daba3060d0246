"""ONNX export of models holding lstm_ext.LSTM (and of the functional forms), by
both exporters, run by onnxruntime: the standard ONNX LSTM operator, nn.LSTM's
outputs, and nn.LSTM's export's failures where it has them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstm_ext
from module_reference import ModuleCase
from module_reference import twins as module_twins

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the dynamo=True exporter's

EXPORTERS = {"dynamo": True, "torchscript": False}


def float_case(**kwargs) -> ModuleCase:
    return ModuleCase(dtype=torch.float32, hx=kwargs.pop("hx", False), **kwargs)


CASES = [float_case(), float_case(layers=2, bidirectional=True), float_case(batch_first=True),
         float_case(bias=False), float_case(layers=2, hx=True),
         float_case(bidirectional=True, batch_first=True, hx=True)]


class Model(nn.Module):
    """An LSTM whose outputs and final states are the model's outputs."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, h0=None, c0=None):
        y, (h_n, c_n) = self.lstm(x, None if h0 is None else (h0, c0))
        return y, h_n, c_n


def twins(case: ModuleCase):
    return tuple(Model(m).eval() for m in module_twins(case))


def inputs(case: ModuleCase, T: int, B: int, P: int = 6):
    x = torch.randn((B, T, 4) if case.batch_first else (T, B, 4))
    if not case.hx:
        return (x,)
    groups = case.layers * (2 if case.bidirectional else 1)
    return x, torch.randn(groups, B, P), torch.randn(groups, B, 6)


def export(model, args, path, dynamo: bool, batch_first: bool):
    """Exported with B dynamic, and T too where nn.LSTM's export has it: with
    dynamo=True, torch 2.14.1 exports a dynamic T only for the first LSTM a process
    exports (torch.export's while-loop decomposition of aten.lstm), nn.LSTM's alike."""
    names = ["x", "h0", "c0"][: len(args)]
    x_axes = {0: "T", 1: "B"}
    if dynamo:
        del x_axes[0]
    if batch_first:
        x_axes = {1 - dim: name for dim, name in x_axes.items()}
    dynamic_axes = {"x": x_axes, **{n: {1: "B"} for n in names[1:]}}
    torch.onnx.export(model, args, str(path), dynamo=dynamo, input_names=names,
                      output_names=["y", "h_n", "c_n"], dynamic_axes=dynamic_axes)
    return names


def run_onnx(path, names, args):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})


def assert_close(got, expected):
    for a, b in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(a), b.detach(), rtol=1e-5, atol=1e-5)


def operators(path) -> set[tuple[str, str]]:
    return {(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_module_exports_as_the_onnx_lstm_operator(case, exporter, tmp_path):
    ref, ours = twins(case)
    path = tmp_path / "ours.onnx"
    names = export(ours, inputs(case, T=5, B=3), path, EXPORTERS[exporter], case.batch_first)
    assert ("", "LSTM") in operators(path)
    assert {domain for domain, _ in operators(path)} <= {"", "ai.onnx"}
    # The shapes it was exported with, then another batch size (and length).
    for T, B in ((5, 3), (5 if EXPORTERS[exporter] else 7, 2)):
        args = inputs(case, T, B)
        assert_close(run_onnx(path, names, args), ref(*args))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_weight_drop_exports_as_its_eval_model(exporter, tmp_path):
    """weight_drop is W_hh itself in eval, the mode models export in: the plain
    ONNX LSTM operator, nn.LSTM's outputs."""
    case = float_case(layers=2, bidirectional=True)
    ref, plain = module_twins(case)
    ours = lstm_ext.LSTM(**case.kwargs(), weight_drop=0.5)
    ours.load_state_dict(plain.state_dict())
    ref, ours = Model(ref).eval(), Model(ours).eval()
    path = tmp_path / "ours.onnx"
    names = export(ours, inputs(case, T=5, B=3), path, EXPORTERS[exporter], case.batch_first)
    assert ("", "LSTM") in operators(path)
    args = inputs(case, T=5, B=2)
    assert_close(run_onnx(path, names, args), ref(*args))


def outcome(model, args, path, dynamo: bool):
    """The outputs onnxruntime gives for the exported model, or the exception type
    of whichever step failed (export, or loading the model)."""
    names = ["x", "h0", "c0", "lengths"][: len(args)]
    try:
        torch.onnx.export(model, args, str(path), dynamo=dynamo, input_names=names)
        return run_onnx(path, names, args)
    except Exception as e:  # noqa: BLE001  (whatever nn.LSTM's export raises)
        return type(e)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_projection_exports_where_nn_lstm_does(exporter, tmp_path):
    """Neither exporter gives a model of nn.LSTM with a projection that onnxruntime
    runs (TorchScript: "LSTMs with projections" unsupported; dynamo=True: a model
    onnxruntime refuses to load); ours fails the same way, or matches where it works."""
    projected = float_case(layers=2, proj=3)
    ref, ours = twins(projected)
    args = inputs(projected, T=5, B=3, P=3)
    dynamo = EXPORTERS[exporter]
    expected = outcome(ref, args, tmp_path / "ref.onnx", dynamo)
    got = outcome(ours, args, tmp_path / "ours.onnx", dynamo)
    if isinstance(expected, type):
        assert got is expected
    else:
        assert_close(got, ref(*args))


class PackedModel(nn.Module):
    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, lengths):
        y, (h_n, c_n) = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(y)[0], h_n, c_n


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_packed_sequence_exports_where_nn_lstm_does(exporter, tmp_path):
    """The TorchScript exporter takes a PackedSequence for nn.LSTM; dynamo=True does not."""
    ref, ours = (PackedModel(m.lstm) for m in twins(float_case(layers=2, bidirectional=True)))
    args = (torch.randn(5, 3, 4), torch.tensor([5, 2, 4]))
    dynamo = EXPORTERS[exporter]
    expected = outcome(ref, args, tmp_path / "ref.onnx", dynamo)
    got = outcome(ours, args, tmp_path / "ours.onnx", dynamo)
    if isinstance(expected, type):
        assert got is expected and dynamo
    else:
        assert_close(got, ref(*args))


class Functional(nn.Module):
    """lstm_ext.lstm on the weights of an nn.LSTM, and lstm_ext.lstm_layer on its
    reverse direction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)

    def forward(self, x):
        y, (h_n, c_n) = lstm_ext.lstm(x, None, self.lstm._flat_weights, num_layers=2,
                                      bidirectional=True, training=False)
        y_rev, (h_rev, c_rev) = lstm_ext.lstm_layer(
            x, None, *self.lstm._flat_weights[4:8], reverse=True)
        return y, h_n, c_n, y_rev, h_rev, c_rev


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_functional_forms_export(exporter, tmp_path):
    model, x = Functional().eval(), torch.randn(5, 3, 4)
    path = tmp_path / "functional.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=EXPORTERS[exporter], input_names=["x"])
    expected = model(x)  # eager: the fused op, whose parity with nn.LSTM is tested
    y, (h_n, c_n) = model.lstm(x)
    torch.testing.assert_close(expected[:3], (y, h_n, c_n), rtol=1e-5, atol=1e-5)
    assert_close(run_onnx(path, ["x"], (x,)), expected)


def test_reverse_layer_on_packed_input_says_what_to_export_instead():
    lstm = nn.LSTM(4, 6)
    x, batch_sizes = torch.randn(6, 4), torch.tensor([3, 2, 1])

    class Layer(nn.Module):
        def forward(self, x):
            return lstm_ext.lstm_layer(x, None, lstm.weight_ih_l0, lstm.weight_hh_l0,
                                       batch_sizes=batch_sizes, reverse=True)[0]

    with pytest.raises(Exception, match="bidirectional=True"):
        torch.onnx.export(Layer(), (x,), dynamo=False)
