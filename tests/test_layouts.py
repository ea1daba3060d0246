"""The weights' layouts lstm_ext.LSTM keeps between inference calls
(lstm_ext/_layouts.py): used only where no derivative can be asked for, made
again after every kind of change to the weights (a stale layout would be a
silent wrong answer), safe across threads, flat in memory, gone with the
module."""

import copy
import gc
import os
import pathlib
import pickle
import sys
import threading
import weakref

import pytest
import torch

import lstm_ext
from cpu_native import PATHS, reduced_path
from lstm_ext import _ops

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import measure  # noqa: E402  (the benchmark's memory probes)

CONFIGS = [dict(num_layers=2, bidirectional=True, proj_size=5),
           dict(num_layers=1, bias=False), dict(num_layers=2)]


def twins(dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(7, 12, **kwargs).to(dtype)
    ours = lstm_ext.LSTM(7, 12, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def inputs(module, dtype=torch.float32, T=1, B=3):
    gen = torch.Generator().manual_seed(1)
    D = 2 if module.bidirectional else 1
    P = module.proj_size or module.hidden_size
    x = torch.randn(T, B, 7, generator=gen).to(dtype)
    hx = (torch.randn(module.num_layers * D, B, P, generator=gen).to(dtype),
          torch.randn(module.num_layers * D, B, 12, generator=gen).to(dtype))
    return x, hx


def assert_like(ref, ours, x, hx, tol):
    expected, got = ref(x, hx), ours(x, hx)
    for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
        torch.testing.assert_close(a, b, **tol)


def sgd_step(module):
    module(*inputs(module))[0].sum().backward()
    torch.optim.SGD(module.parameters(), lr=0.5).step()


# What the layers are given between two inference calls: each changes the
# weights of nn.LSTM and of ours alike.
CHANGES = {
    "optimizer step": sgd_step,
    "in-place edit": lambda m: _no_grad(lambda: m.weight_hh_l0.mul_(-2)),
    "in-place edit of a bias": lambda m: _no_grad(lambda: m.bias_ih_l0.add_(1))
    if m.bias else _no_grad(lambda: m.weight_ih_l0.add_(1)),
    "load_state_dict": lambda m: m.load_state_dict(
        {k: v * 0.5 for k, v in m.state_dict().items()}),
    ".data assignment": lambda m: setattr(m.weight_ih_l0, "data", m.weight_ih_l0.data * 3),
    "a .data edit, then flatten_parameters()": lambda m: (m.weight_hh_l0.data.mul_(3),
                                                          m.flatten_parameters()),
    "a new Parameter assigned": lambda m: setattr(
        m, "weight_hh_l0", torch.nn.Parameter(m.weight_hh_l0.detach() * -1)),
    ".double() and back": lambda m: m.double().float(),
    ".half() and back": lambda m: m.half().float(),
    "the last layer's projection edited": lambda m: _no_grad(
        lambda: getattr(m, f"weight_hr_l{m.num_layers - 1}").mul_(-1))
    if m.proj_size else _no_grad(lambda: m.weight_hh_l0.add_(0.5)),
}


def _no_grad(fn):
    with torch.no_grad():
        fn()


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_every_change_takes_effect(change, mode, config):
    ref, ours = twins(**config)
    x, hx = inputs(ours)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    tol = dict(rtol=1e-5, atol=1e-6)
    with context():
        assert_like(ref, ours, x, hx, tol)
        assert ours.layout_cache_bytes() > 0
        assert_like(ref, ours, x, hx, tol)
    for module in (ref, ours):
        CHANGES[change](module)
    with context():
        assert_like(ref, ours, x, hx, tol)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("form", ["packed", "batch_first", "unbatched", "no hx", "T=5"])
def test_every_input_form_runs_the_stack_op(form, config):
    """Without grad the module runs its whole stack in one op
    (lstm_inference) on every input form nn.LSTM takes."""
    ref, ours = twins(torch.float64, batch_first=form == "batch_first", **config)
    x, hx = inputs(ours, torch.float64, T=5 if form in ("packed", "T=5") else 1)
    if form == "batch_first":
        x = x.transpose(0, 1)
    elif form == "unbatched":
        x, hx = x[:, 0], (hx[0][:, 0], hx[1][:, 0])
    elif form == "no hx":
        hx = None
    elif form == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 3]),
                                                    enforce_sorted=False)
    with torch.no_grad(), torch.profiler.profile() as prof:
        got, expected = ours(x, hx), ref(x, hx)
    assert "lstm_ext::lstm_inference" in {e.name for e in prof.events()}
    if form == "packed":
        got, expected = (got[0].data, *got[1]), (expected[0].data, *expected[1])
    else:
        got, expected = (got[0], *got[1]), (expected[0], *expected[1])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_in_training_mode_without_grad():
    """Training-mode dropout between layers runs layer by layer (with the kept
    layouts), drawing nn.LSTM's masks."""
    ref, ours = twins(num_layers=3, dropout=0.5)
    x, hx = inputs(ours, T=4)
    with torch.no_grad():
        for _ in range(2):
            torch.manual_seed(5)
            with torch.profiler.profile() as prof:
                got = ours(x, hx)
            torch.manual_seed(5)
            expected = ref(x, hx)
            for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            names = {e.name for e in prof.events()}
            assert "lstm_ext::lstm_layer_inference" in names
            assert "lstm_ext::lstm_inference" not in names
    assert ours.layout_cache_bytes() > 0


def test_data_assigned_twice_between_calls():
    """`.data` assignment keeps the version counter: the kept layout holds the
    old storage, so the second new storage cannot take its address."""
    ref, ours = twins(num_layers=2)
    x, hx = inputs(ours)
    tol = dict(rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for _ in range(5):
            assert_like(ref, ours, x, hx, tol)
            for module in (ref, ours):
                for _ in range(2):
                    module.weight_hh_l1.data = module.weight_hh_l1.data * -1.5
        assert_like(ref, ours, x, hx, tol)


def test_weights_made_in_inference_mode():
    """Inference tensors have no version counter: nothing is kept for them, and
    edits (only possible in inference mode) show."""
    with torch.inference_mode():
        ref, ours = twins(num_layers=2, proj_size=5)
        x, hx = inputs(ours)
        tol = dict(rtol=1e-5, atol=1e-6)
        assert_like(ref, ours, x, hx, tol)
        for module in (ref, ours):
            module.weight_hh_l0.mul_(-2)
        assert_like(ref, ours, x, hx, tol)
    assert ours.layout_cache_bytes() == 0


def test_tracing_keeps_nothing():
    """torch.jit.trace records the per-layer op on the weights, not a layout
    (which would be a constant of the trace): edits show in the traced module."""
    ref, ours = twins(num_layers=2)
    x, hx = inputs(ours)
    with torch.no_grad():
        ours(x, hx)
        traced = torch.jit.trace(ours, (x, hx))
        assert "lstm_layer_lay_out" not in str(traced.graph)
        for module in (ref, ours):
            module.weight_hh_l1.mul_(-2)
        assert_like(ref, traced, x, hx, dict(rtol=1e-5, atol=1e-6))


def test_the_stack_op_multiplies_the_kept_layouts():
    """lstm_inference reads the layouts it is given, not the weights: given
    those of other weights of the same sizes, it computes with them."""
    torch.manual_seed(0)
    weights = [torch.randn(48, 7), torch.randn(48, 12), torch.randn(48), torch.randn(48)]
    other = [torch.randn_like(w) for w in weights]
    x, batch_sizes = torch.randn(3, 7), torch.tensor([3])
    h0, c0 = torch.randn(1, 3, 12), torch.randn(1, 3, 12)
    with torch.no_grad():
        expected = _ops.lstm_inference(x, batch_sizes, h0, c0, other, [], True, 1, False)
        kept = list(_ops.lstm_layer_lay_out(*other, None))
        got = _ops.lstm_inference(x, batch_sizes, h0, c0, weights, kept, True, 1, False)
        own = _ops.lstm_inference(x, batch_sizes, h0, c0, weights, [], True, 1, False)
    for a, b, c in zip(got, expected, own):
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_functional_call_and_parametrizations_use_their_weights():
    """Weights swapped in for one call, or made by a parametrization at each
    call, are other tensors than the ones a layout was kept for."""
    ref, ours = twins(num_layers=2)
    x, hx = inputs(ours)
    tol = dict(rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert_like(ref, ours, x, hx, tol)
        swapped = {name: -w for name, w in ours.named_parameters()}
        expected = torch.func.functional_call(ref, swapped, (x, hx))
        got = torch.func.functional_call(ours, swapped, (x, hx))
        for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
            torch.testing.assert_close(a, b, **tol)
        assert_like(ref, ours, x, hx, tol)
    for module in (ref, ours):
        torch.nn.utils.parametrizations.weight_norm(module, "weight_hh_l1")
    with torch.no_grad():
        assert_like(ref, ours, x, hx, tol)
        for module in (ref, ours):
            module.parametrizations.weight_hh_l1.original0.mul_(-3)
        assert_like(ref, ours, x, hx, tol)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_keeps_its_path(dtype, path):
    """A layout is of the path it was made on: the other path's call lays the
    weights out again rather than misread them."""
    ref, ours = twins(dtype, num_layers=2, proj_size=5)
    x, hx = inputs(ours, dtype, T=3)
    with torch.no_grad():
        with reduced_path(path, dtype):
            first = ours(x, hx)
        with reduced_path("upcast", dtype):
            upcast = ours(x, hx)
        with reduced_path(path, dtype):
            again = ours(x, hx)
    for a, b in zip((first[0], *first[1]), (again[0], *again[1])):
        assert torch.equal(a, b)
    torch.testing.assert_close(upcast[0].float(), first[0].float(), rtol=2e-2, atol=2e-2)


def test_nothing_is_kept_where_a_derivative_can_be_asked_for():
    """Training lays its weights out per call, and drops what inference kept."""
    ref, ours = twins(num_layers=2)
    x, hx = inputs(ours, T=4)
    y = ours(x, hx)[0]
    assert ours.layout_cache_bytes() == 0
    y.sum().backward()
    ref(x, hx)[0].sum().backward()
    torch.testing.assert_close(ours.weight_hh_l1.grad, ref.weight_hh_l1.grad)
    with torch.no_grad():
        x_grad = x.clone().requires_grad_()
        ours(x_grad, hx)
    assert ours.layout_cache_bytes() > 0
    x_grad = x.clone().requires_grad_()
    torch.autograd.grad(ours(x_grad, hx)[0].sum(), x_grad)
    assert ours.layout_cache_bytes() == 0


def test_under_autocast_nothing_is_kept():
    """autocast casts the weights: the cast ones are laid out per call."""
    _, ours = twins(num_layers=1)
    x, hx = inputs(ours)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours(x, hx)
    assert ours.layout_cache_bytes() == 0


def test_threads_calling_one_module():
    ref, ours = twins(num_layers=2, bidirectional=True)
    x, hx = inputs(ours, T=2)
    with torch.no_grad():
        expected = ref(x, hx)
    errors = []

    def worker():
        try:
            with torch.no_grad():
                for _ in range(30):
                    got = ours(x, hx)
                    for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
                        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine keeps freed memory resident")
def test_memory_stays_flat_over_decode_steps():
    _, ours = twins(num_layers=2)
    x, hx = inputs(ours)
    with torch.no_grad():
        for _ in range(200):
            hx = ours(x, hx)[1]
        gc.collect()
        before = measure.rss_bytes()
        for _ in range(3000):
            hx = ours(x, hx)[1]
        gc.collect()
    assert measure.rss_bytes() - before < 4 * 2**20


def test_the_layouts_go_with_the_module():
    _, ours = twins(num_layers=2)
    x, hx = inputs(ours)
    with torch.no_grad():
        ours(x, hx)
    kept = weakref.ref(ours._kept_layouts)
    del ours
    gc.collect()
    assert kept() is None


def test_copies_and_pickles_keep_no_layouts():
    ref, ours = twins(num_layers=2, proj_size=5)
    x, hx = inputs(ours)
    with torch.no_grad():
        ours(x, hx)
        for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
            assert clone.layout_cache_bytes() == 0
            assert_like(ref, clone, x, hx, dict(rtol=1e-5, atol=1e-6))


def test_a_layout_of_other_weights_is_refused():
    """The op checks a kept layout against the layer: sizes, dtype, presence."""
    torch.manual_seed(0)
    w_ih, w_hh, b = torch.randn(16, 3), torch.randn(16, 4), torch.randn(16)
    x, batch_sizes = torch.randn(2, 3), torch.tensor([2])
    h0 = c0 = torch.zeros(2, 4)
    kept = _ops.lstm_layer_lay_out(w_ih, w_hh, b, b, None)
    args = (x, batch_sizes, h0, c0, w_ih, w_hh, b, b, None, False)
    with torch.no_grad():
        expected = _ops.lstm_layer_inference(*args)
        got = _ops.lstm_layer_inference(*args, *kept)
        for a, e in zip(got, expected):
            assert torch.equal(a, e)
        with pytest.raises(RuntimeError, match="kept_bias must be None"):
            _ops.lstm_layer_inference(x, batch_sizes, h0, c0, w_ih, w_hh, None, None, None,
                                      False, *kept)
        other = _ops.lstm_layer_lay_out(torch.randn(16, 5), w_hh, b, b, None)
        with pytest.raises(RuntimeError, match="kept_ih is not this layer's layout"):
            _ops.lstm_layer_inference(*args, *other)
        double = _ops.lstm_layer_lay_out(w_ih.double(), w_hh.double(), b.double(), b.double(),
                                         None)
        with pytest.raises(RuntimeError, match="kept_ih is not this layer's layout"):
            _ops.lstm_layer_inference(*args, *double)


def test_the_layout_op_runs_eagerly_only():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), pytest.raises(RuntimeError, match="runs eagerly only"):
        _ops.lstm_layer_lay_out(torch.randn(16, 3), torch.randn(16, 4), None, None, None)
