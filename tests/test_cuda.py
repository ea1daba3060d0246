"""The CUDA op on a GPU: parity with the CPU op in every dtype, gradcheck
(every flag), inference, tangents and per-sample gradients, CUDA graph capture,
non-default streams, determinism. No GPU is present where
this project is developed: these tests skip there and the CUDA code is checked
by tests/test_cuda_emulated.py instead; they run wherever a GPU appears."""


import pytest
import torch

import lstm_ext
from autograd_modes import fused_only, no_vmap_loops
from grouped_backward import assert_groups_match_problems_alone
from module_reference import ModuleProblem, assert_same_results
from module_reference import twins as module_twins
from reference import Case, Problem, assert_same, in_both_directions_and_dtypes, tolerance
from test_module import GRID as MODULE_GRID
from test_autograd_modes import primals_and_tangents
from test_gradcheck import CONFIGS, config_id, gradcheck_layer
from variant_reference import assert_layers_agree_with_options

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = [
    Case(),
    Case(bias=False, proj=3),
    Case(B=1, I=2, H=7),
    Case(T=7, B=5, I=3, H=9, packed=True, proj=4),
    Case(T=3, B=70, I=16, H=301, packed=True),
]
CASES = in_both_directions_and_dtypes(SHAPES)


def on_device(device, dtype=None):
    """lstm_ext.lstm_layer run on `device` (in `dtype`) for CPU arguments, its
    results back on the CPU in the arguments' dtype: gradients flow through."""

    def run(input, hx, *weights, **kwargs):
        def to(t):
            return None if t is None else t.to(device, dtype or t.dtype)

        kwargs = {k: to(v) if isinstance(v, torch.Tensor) and k != "batch_sizes" else v
                  for k, v in kwargs.items()}
        y, (h_n, c_n) = lstm_ext.lstm_layer(to(input), tuple(map(to, hx)), *map(to, weights),
                                            **kwargs)
        return y.to("cpu", input.dtype), (h_n.to("cpu", input.dtype), c_n.to("cpu", input.dtype))

    return run


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c}-{str(c.dtype)[6:]}")
def test_matches_cpu_op(case):
    problem = Problem(case)
    assert_same(problem, problem.run_ours(layer=on_device("cuda")), problem.run_ours())


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: f"{c}-{str(c.dtype)[6:]}")
def test_matches_nn_lstm(case):
    problem = Problem(case)
    assert_same(problem, problem.run_ours(layer=on_device("cuda")), problem.run_torch())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recurrent_scale_matches_cpu_op(dtype):
    assert_layers_agree_with_options(on_device("cuda"), lstm_ext.lstm_layer, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zoneout_matches_cpu_op(dtype):
    assert_layers_agree_with_options(on_device("cuda"), lstm_ext.lstm_layer, dtype,
                                     zoneout=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layer_norm_matches_cpu_op(dtype):
    """LayerNorm with zoneout and recurrent dropout: the op's results and every
    gradient (LayerNorm's four too), a projection, the reverse direction."""
    from test_module_layer_norm import DIFFERENTIABLE, op_problem

    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype == torch.float64 else a
            for a in op_problem(9, True)]
    results = []
    for device in ("cpu", "cuda"):
        moved = [a.to(device) if isinstance(a, torch.Tensor) and i != 1 else a
                 for i, a in enumerate(args)]
        leaves = [a.requires_grad_() if i in DIFFERENTIABLE and a is not None else a
                  for i, a in enumerate(moved)]
        out = torch.ops.lstm_ext.lstm_layer(*leaves)[:3]
        wanted = [a for i, a in enumerate(leaves) if i in DIFFERENTIABLE and a is not None]
        grads = torch.autograd.grad(out, wanted, [torch.ones_like(o) for o in out])
        results.append([t.cpu() for t in (*out, *grads)])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_reduced_precision_matches_cpu_op(dtype, reverse):
    """Both devices compute float16/bfloat16 in float: the same results up to
    the order of float sums, rounded to `dtype`."""
    problem = Problem(Case(T=6, B=4, packed=True, proj=3, reverse=reverse, dtype=torch.float32))
    for leaf in problem.leaves():
        leaf.data = leaf.data.to(dtype).float()
    gpu = problem.run_ours(layer=on_device("cuda", dtype))
    cpu = problem.run_ours(layer=on_device("cpu", dtype))
    leaves = problem.leaves()
    tol = dict(rtol=1e-2, atol=1e-2)
    for a, b in zip((gpu.y, gpu.h_n, gpu.c_n), (cpu.y, cpu.h_n, cpu.c_n)):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(torch.autograd.grad(gpu.loss, leaves), torch.autograd.grad(cpu.loss, leaves)):
        torch.testing.assert_close(a, b, **tol)


class OnDevice(torch.nn.Module):
    """lstm_ext.LSTM on `device`, taking and returning CPU tensors (and packed
    sequences): gradients flow back through the moves."""

    def __init__(self, lstm, device):
        super().__init__()
        self.lstm, self.device = lstm.to(device), device

    def forward(self, input, hx=None):
        hx = None if hx is None else tuple(t.to(self.device) for t in hx)
        output, (h_n, c_n) = self.lstm(input.to(self.device), hx)
        return output.to("cpu"), (h_n.to("cpu"), c_n.to("cpu"))


def run_module_on(device, module, problem):
    run = problem.run(OnDevice(module, device))
    run.grads = {name.removeprefix("lstm."): g.to("cpu") for name, g in run.grads.items()}
    return run


MODULE_CASES = [c for c in MODULE_GRID if c.layers < 3 and c.batch_first == (c.bias is False)]


@pytest.mark.parametrize("case", MODULE_CASES, ids=str)
def test_module_matches_nn_lstm(case):
    """lstm_ext.LSTM on the GPU against nn.LSTM on the CPU: outputs, final states, every
    gradient (layers, bidirectional, batch_first, bias, proj_size, padded, packed,
    unbatched, hx)."""
    ref, ours = module_twins(case)
    problem = ModuleProblem(case)
    assert_same_results(run_module_on("cuda", ours, problem), problem.run(ref),
                        **tolerance(case.dtype))


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_gradcheck(cfg):
    gradcheck_layer(cfg, on_device("cuda"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c}-{str(c.dtype)[6:]}")
def test_inference_matches_cpu(case):
    """Without grad: the inference op on the GPU."""
    problem = Problem(case)
    leaves = [leaf.detach() for leaf in problem.leaves()]
    with torch.no_grad():
        gpu = problem.ours_fn(on_device("cuda"))(*leaves)
        cpu = problem.ours_fn()(*leaves)
    tol = dict(rtol=1e-10, atol=1e-10) if case.dtype == torch.float64 else dict(rtol=1e-4,
                                                                                   atol=1e-4)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_steps_keep_layouts_on_the_gpu(dtype):
    """A decode loop on the GPU (the whole stack in one op, layouts kept)
    against nn.LSTM on the CPU, before and after an in-place edit."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3).to(dtype)
    ours = lstm_ext.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    ours.load_state_dict(ref.state_dict())
    ours = ours.to("cuda", dtype)
    x = torch.randn(1, 4, 5).to(dtype)
    hx = (torch.zeros(4, 4, 3, dtype=dtype), torch.zeros(4, 4, 8, dtype=dtype))
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for step in range(4):
            if step == 2:
                ref.weight_hh_l1.mul_(-1)
                ours.weight_hh_l1.mul_(-1)
            expected, state = ref(x, hx)
            got, _ = ours(x.cuda(), tuple(t.cuda() for t in hx))
            torch.testing.assert_close(got.cpu(), expected, **tol)
            hx = state
    assert ours.layout_cache_bytes() > 0


def test_graph_capture_keeps_no_layout():
    """A captured decode step lays its weights out inside the graph: a layout
    the module kept could be replaced (and freed) under the graph."""
    torch.manual_seed(0)
    lstm = lstm_ext.LSTM(5, 8, num_layers=2).cuda().eval()
    x, hx = torch.randn(1, 3, 5, device="cuda"), (torch.zeros(2, 3, 8, device="cuda"),) * 2
    with torch.no_grad():
        expected = lstm(x, hx)[0]
        lstm.flatten_parameters()
        graph, out = captured(lambda: lstm(x, hx)[0])
        assert lstm.layout_cache_bytes() == 0
        lstm.weight_hh_l1.mul_(-1)
        lstm(x, hx)
        lstm.weight_hh_l1.mul_(-1)
        graph.replay()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c}-{str(c.dtype)[6:]}")
def test_tangents_match_cpu_op(case):
    """The tangent op (forward-mode AD) on the GPU."""
    problem = Problem(case)
    primals, tangents = primals_and_tangents(problem)
    with fused_only():
        _, gpu = torch.func.jvp(problem.ours_fn(on_device("cuda")), primals, tangents)
        _, cpu = torch.func.jvp(problem.ours_fn(), primals, tangents)
    tol = dict(rtol=1e-10, atol=1e-10) if case.dtype == torch.float64 else dict(rtol=1e-4,
                                                                                   atol=1e-4)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a, b, **tol)


def test_per_sample_gradients_match_cpu():
    """vmap(grad): the grouped weight gradients of the backward op on the GPU."""
    problem = Problem(Case(T=5, B=6, proj=3))
    primals, _ = primals_and_tangents(problem)

    def loss(weights, x, h0, c0, layer):
        y, h_n, c_n = problem.ours_fn(layer)(x.unsqueeze(1), h0.unsqueeze(1), c0.unsqueeze(1),
                                             *weights)
        return y.sin().sum() + h_n.square().sum() + c_n.sum()

    x, h0, c0 = primals[0].transpose(0, 1), primals[1].transpose(0, 1), primals[2].transpose(0, 1)
    results = []
    for layer in (on_device("cuda"), on_device("cpu")):
        with no_vmap_loops(), fused_only():
            results.append(torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0, None))(
                primals[3:], x, h0, c0, layer))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def cuda_problem():
    """Leaves (x, h0, c0, weights) on the GPU, float32, packed, with a
    projection, and the loss of lstm_ext.lstm_layer on them."""
    problem = Problem(Case(T=6, B=4, packed=True, proj=3, dtype=torch.float32))
    packed = torch.nn.utils.rnn.pack_padded_sequence(problem.x.detach(), problem.lengths,
                                                     enforce_sorted=False)
    order = packed.sorted_indices
    leaves = [packed.data, problem.h0[0, order], problem.c0[0, order], *problem.weights()]
    leaves = [t.detach().cuda().requires_grad_() for t in leaves]

    def loss():
        x, h0, c0, *w = leaves
        y, (h_n, c_n) = lstm_ext.lstm_layer(x, (h0, c0), *w, batch_sizes=packed.batch_sizes)
        return y.square().sum() + h_n.sin().sum() + c_n.cos().sum()

    return leaves, loss


def loss_and_grads(leaves, loss):
    value = loss()
    return [value.detach(), *torch.autograd.grad(value, leaves)]


def captured(fn):
    """fn run once on a side stream (the warm-up torch.cuda.graphs asks for
    before capture), then captured: the graph and fn's result in it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


def test_cuda_graph_capture_forward_and_backward():
    leaves, loss = cuda_problem()
    graph, captured_results = captured(lambda: loss_and_grads(leaves, loss))

    with torch.no_grad():
        for leaf in leaves:
            leaf.copy_(torch.randn_like(leaf))
    graph.replay()
    torch.cuda.synchronize()
    eager = loss_and_grads(leaves, loss)
    for a, b in zip(captured_results, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_non_default_stream():
    leaves, loss = cuda_problem()
    expected = loss_and_grads(leaves, loss)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = loss_and_grads(leaves, loss)
    torch.cuda.current_stream().wait_stream(stream)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_deterministic():
    """No atomics in the gradient reductions: repeated runs agree bit for bit."""
    leaves, loss = cuda_problem()
    first, second = loss_and_grads(leaves, loss), loss_and_grads(leaves, loss)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_device_of_its_arguments():
    problem = Problem(Case(T=4, B=3, packed=True, proj=2))
    with torch.cuda.device(0):
        assert_same(problem, problem.run_ours(layer=on_device("cuda:1")), problem.run_ours())


class _OpsOnTheGPU:
    """torch.ops.lstm_ext's layer and backward ops run on the GPU for CPU
    arguments (batch_sizes, the one int64 tensor, stays), results back."""

    def __getattr__(self, name):
        op = getattr(torch.ops.lstm_ext, name)

        def run(*args):
            args = [a.cuda() if isinstance(a, torch.Tensor) and a.dtype != torch.int64 else a
                    for a in args]
            return tuple(None if r is None else r.cpu() for r in op(*args))

        return run


@pytest.mark.parametrize("groups, problems", [(5, None), (2, None), (5, [3, 0, 4, 1, 2])])
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_groups_on_unequal_lengths(groups, problems, reverse):
    """Per-problem weight gradients on a packed batch of unequal lengths
    (lstm_ext.opacus's per-sample gradients): gathered, one batch of cuBLAS
    products per block."""
    assert_groups_match_problems_alone(_OpsOnTheGPU(), groups, reverse=reverse, proj=4,
                                       tol=1e-10, problems=problems)


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_opacus_per_sample_gradients(mode):
    """lstm_ext.opacus on the GPU: a packed unsorted batch through two
    bidirectional projected layers, per-sample gradients of every parameter
    against one-sample backward passes on the CPU (skips without Opacus)."""
    opacus_tests = pytest.importorskip("test_opacus")
    cfg = opacus_tests.Config(reads=("output", "h_n", "c_n"), layers=2, bidirectional=True,
                              proj=2)
    model = opacus_tests.model_for(cfg, torch.float64)
    x, lengths, h0, c0, targets = opacus_tests.inputs(cfg, torch.float64)
    expected = opacus_tests.per_sample_by_one_sample_passes(model, x, lengths, h0, c0, targets)
    wrapped = opacus_tests.GradSampleModule(model.cuda(), force_functorch=mode == "functorch")
    logits = wrapped(x.cuda(), lengths, h0.cuda(), c0.cuda())
    torch.nn.functional.cross_entropy(logits, targets.cuda()).backward()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad_sample.cpu(), e, rtol=1e-8, atol=1e-10)
    wrapped._close()
