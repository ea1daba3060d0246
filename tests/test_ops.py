"""The torch.library contract of lstm_ext::lstm_layer: opcheck, torch.compile,
and the op's own argument checks."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lstm_ext
from compile_backend import BACKEND
from grouped_backward import assert_groups_match_problems_alone
from lstm_ext import _ops
from lstm_ext._checks import unpack_group

B, I, H, P = 3, 4, 5, 2
BATCH_SIZES = torch.tensor([3, 2, 2, 1], dtype=torch.int64)
ROWS = int(BATCH_SIZES.sum())


def randn(*shape, dtype=torch.float64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def op_args(proj=True, bias=True, reverse=False, dtype=torch.float64):
    torch.manual_seed(0)
    out = P if proj else H
    return [
        randn(ROWS, I, dtype=dtype), BATCH_SIZES.clone(), randn(B, out, dtype=dtype),
        randn(B, H, dtype=dtype), randn(4 * H, I, dtype=dtype), randn(4 * H, out, dtype=dtype),
        randn(4 * H, dtype=dtype) if bias else None, randn(4 * H, dtype=dtype) if bias else None,
        randn(out, H, dtype=dtype) if proj else None, reverse,
    ]


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck(proj, bias, reverse):
    torch.library.opcheck(_ops.lstm_layer, op_args(proj, bias, reverse))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_dtypes(dtype):
    torch.library.opcheck(_ops.lstm_layer, op_args(dtype=dtype))


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_inference(proj, reverse):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in op_args(proj, True, reverse)]
    torch.library.opcheck(_ops.lstm_layer_inference, args)


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_rec_scale(proj, reverse):
    """Recurrent dropout's scale: the layer (with its autograd rules), and the
    inference op after its kept layout's four Nones."""
    args = op_args(proj, True, reverse)
    scale = torch.randint(0, 2, (B, P if proj else H), dtype=torch.float64) * 2
    torch.library.opcheck(_ops.lstm_layer, [*args, scale])
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(_ops.lstm_layer_inference, [*detached, None, None, None, None, scale])
    x, bs, h0, c0, w_ih, w_hh, b_ih, _, w_hr, reverse = detached
    y, _, c_n, gates, cells = _ops.lstm_layer(*detached, scale)
    saved = (x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse)
    torch.library.opcheck(_ops.lstm_layer_backward, (torch.randn_like(y), None,
                                                     torch.randn_like(c_n), *saved, [True] * 4,
                                                     1, scale))
    tangents = [torch.randn_like(t) for t in (x, h0, c0, w_ih, w_hh, b_ih)]
    torch.library.opcheck(_ops.lstm_layer_jvp, (*saved[:7], y, gates, cells, reverse, *tangents,
                                                None if w_hr is None else torch.randn_like(w_hr),
                                                scale))


def test_bad_rec_scale_raises():
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in op_args()]
    with pytest.raises(RuntimeError, match=r"rec_scale must have shape \[3, 2\]"):
        _ops.lstm_layer(*args, torch.ones(B, H, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="rec_scale has dtype Float but x has dtype Double"):
        _ops.lstm_layer(*args, torch.ones(B, P))
    with pytest.raises(RuntimeError, match="rec_scale must be 2-D"):
        _ops.lstm_layer(*args, torch.ones(P, dtype=torch.float64))
    with FakeTensorMode() as mode:  # what torch.compile traces with
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=r"rec_scale must have shape \[3, 2\]"):
            _ops.lstm_layer(*fake, mode.from_tensor(torch.ones(B, H, dtype=torch.float64)))


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("which", ["c", "h", "both"])
def test_opcheck_zoneout(proj, reverse, which):
    """Zoneout's weights: the layer (its saved cells then hold c̃ too), the
    inference op, and the backward op on the layer's saved results."""
    args = op_args(proj, True, reverse)
    d_c = torch.randint(0, 2, (ROWS, H), dtype=torch.float64) if which != "h" else None
    d_h = torch.rand(ROWS, P if proj else H, dtype=torch.float64) if which != "c" else None
    scale = torch.randint(0, 2, (B, P if proj else H), dtype=torch.float64) * 2
    torch.library.opcheck(_ops.lstm_layer, [*args, scale, d_c, d_h])
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(_ops.lstm_layer_inference,
                          [*detached, None, None, None, None, None, d_c, d_h])
    x, bs, h0, c0, w_ih, w_hh, b_ih, _, w_hr, reverse = detached
    y, _, c_n, gates, cells = _ops.lstm_layer(*detached, None, d_c, d_h)
    assert cells.shape[0] == (2 if d_c is not None else 1) * ROWS
    saved = (x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse)
    torch.library.opcheck(_ops.lstm_layer_backward, (torch.randn_like(y), None,
                                                     torch.randn_like(c_n), *saved, [True] * 4,
                                                     1, None, None, d_c, d_h))


def test_bad_zoneout_raises():
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in op_args()]
    with pytest.raises(RuntimeError, match=r"zoneout_c must have shape \[8, 5\]"):
        _ops.lstm_layer(*args, None, torch.ones(ROWS, P, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="zoneout_h has dtype Float but x has dtype Double"):
        _ops.lstm_layer(*args, None, None, torch.ones(ROWS, P))
    with pytest.raises(RuntimeError, match="zoneout_h is a constant"):
        _ops.lstm_layer(*args, None, None, torch.ones(ROWS, P, dtype=torch.float64,
                                                      requires_grad=True))
    y, _, _, gates, cells = _ops.lstm_layer(*args)
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, reverse = args
    # The backward of a forward without zoneout_c has no c̃ to read.
    with pytest.raises(RuntimeError, match=r"cells must have shape \[16, 5\]"):
        _ops.lstm_layer_backward(torch.ones_like(y), None, None, x, bs, h0, c0, w_ih, w_hh, w_hr,
                                 y, gates, cells, reverse, [True] * 4, 1, None, None,
                                 torch.ones(ROWS, H, dtype=torch.float64))
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=r"zoneout_h must have shape \[8, 2\]"):
            _ops.lstm_layer(*fake, None, None, mode.from_tensor(torch.ones(ROWS, H,
                                                                           dtype=torch.float64)))


def stack_args(proj, bias, bidirectional, kept):
    """lstm_inference's arguments for two layers of op_args' sizes (float64)."""
    torch.manual_seed(0)
    out, directions = (P if proj else H), 2 if bidirectional else 1
    weights = []
    for layer in range(2):
        for _ in range(directions):
            inputs = I if layer == 0 else directions * out
            weights += [torch.randn(4 * H, inputs, dtype=torch.float64),
                        torch.randn(4 * H, out, dtype=torch.float64)]
            weights += [torch.randn(4 * H, dtype=torch.float64) for _ in range(2 * bias)]
            weights += [torch.randn(out, H, dtype=torch.float64)] if proj else []
    groups = 2 * directions
    per_group = len(weights) // groups
    laid_out = []
    if kept:
        for k in range(groups):
            laid_out += _ops.lstm_layer_lay_out(
                *unpack_group(weights[k * per_group : (k + 1) * per_group], bias))
    return [torch.randn(ROWS, I, dtype=torch.float64), BATCH_SIZES.clone(),
            torch.randn(groups, B, out, dtype=torch.float64),
            torch.randn(groups, B, H, dtype=torch.float64), weights, laid_out, bias, 2,
            bidirectional]


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kept", [False, True])
def test_opcheck_stack_inference(proj, bias, bidirectional, kept):
    """lstm_inference is the module's stack (test_layouts.py compares it with
    nn.LSTM); its fake, schema and registrations hold."""
    torch.library.opcheck(_ops.lstm_inference, stack_args(proj, bias, bidirectional, kept))


def test_bad_stack_arguments_raise():
    x, bs, h0, c0, weights, kept, bias, layers, bidirectional = stack_args(True, True, True, True)
    with pytest.raises(RuntimeError, match="expected 4 weights \\(5 with a projection\\)"):
        _ops.lstm_inference(x, bs, h0, c0, weights[:-1], kept, bias, layers, bidirectional)
    with pytest.raises(RuntimeError, match="kept must be empty or hold 4 entries"):
        _ops.lstm_inference(x, bs, h0, c0, weights, kept[:-1], bias, layers, bidirectional)
    with pytest.raises(RuntimeError, match="h0 and c0 must be 3-D with 4 layers"):
        _ops.lstm_inference(x, bs, h0[:2], c0[:2], weights, kept, bias, layers, bidirectional)
    with pytest.raises(RuntimeError, match="num_layers must be positive"):
        _ops.lstm_inference(x, bs, h0, c0, weights, kept, bias, 0, bidirectional)
    unprojected = stack_args(False, True, True, True)[5]
    with pytest.raises(RuntimeError, match="kept_hh is not this layer's layout"):
        _ops.lstm_inference(x, bs, h0, c0, weights, unprojected, bias, layers, bidirectional)
    with pytest.raises(RuntimeError, match="lstm_inference has no derivative"):
        _ops.lstm_inference(x.clone().requires_grad_(), bs, h0, c0, weights, kept, bias,
                            layers, bidirectional)
    with pytest.raises(RuntimeError, match="lstm_inference has no derivative"):
        _ops.lstm_inference(x, bs, h0, c0, [weights[0].clone().requires_grad_(), *weights[1:]],
                            kept, bias, layers, bidirectional)


def test_opcheck_backward():
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = op_args()
    y, h_n, c_n, gates, cells = _ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    detached = [t.detach() for t in (x, h0, c0, w_ih, w_hh, w_hr, y, gates, cells)]
    x, h0, c0, w_ih, w_hh, w_hr, y, gates, cells = detached
    for mask in ([True] * 4, [False, True, False, True], [False] * 4):
        args = (torch.randn_like(y), None, torch.randn_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_hr,
                y, gates, cells, reverse, mask)
        torch.library.opcheck(_ops.lstm_layer_backward, args)


def test_opcheck_backward_groups():
    """Two interleaved problems (sequences 0, 2 and 1, 3): per-problem weight
    gradients, each what a backward of that problem alone gives."""
    torch.manual_seed(0)
    bs = torch.tensor([4, 4, 2])
    rows = int(bs.sum())
    x, h0, c0 = randn(rows, I, grad=False), randn(4, P, grad=False), randn(4, H, grad=False)
    w_ih, w_hh = randn(4 * H, I, grad=False), randn(4 * H, P, grad=False)
    w_hr = randn(P, H, grad=False)
    y, _, _, gates, cells = _ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, None, None, w_hr, False)
    dy = torch.randn_like(y)
    args = (dy, None, None, x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, False, [True] * 4, 2)
    torch.library.opcheck(_ops.lstm_layer_backward, args)
    grouped = _ops.lstm_layer_backward(*args)
    for g in range(2):
        rows_g = torch.arange(g, rows, 2)
        alone = _ops.lstm_layer_backward(
            dy[rows_g], None, None, x[rows_g], bs // 2, h0[g::2], c0[g::2], w_ih, w_hh, w_hr,
            y[rows_g], gates[rows_g], cells[rows_g], False, [True] * 4)
        for a, b in zip(grouped[3:7], alone[3:7]):
            torch.testing.assert_close(a[g], b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grouped[0][rows_g], alone[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match=r"groups must be positive"):
        _ops.lstm_layer_backward(*args[:-1], 0)
    for problems, message in ((torch.tensor([0, 1, 2, 1]), r"problems\[2\] = 2 is not in"),
                              (torch.tensor([0, 1, 1]), "problems must be a 1-D int64 CPU"),
                              (torch.tensor([0.0, 1, 1, 0]), "problems must be a 1-D int64 CPU")):
        with pytest.raises(RuntimeError, match=message):
            _ops.lstm_layer_backward(*args, None, problems)
    torch.library.opcheck(_ops.lstm_layer_backward, (*args, None, torch.tensor([1, 0, 0, 1])))


@pytest.mark.parametrize("groups, problems", [(5, None), (2, None), (3, None),
                                              (5, [3, 0, 4, 1, 2]), (3, [2, 2, 0, 2, 0])])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", [(), ("recurrent_scale",), ("recurrent_scale", "zoneout")],
                         ids=["plain", "rec", "rec-zoneout"])
def test_backward_groups_on_unequal_lengths(groups, problems, proj, reverse, options):
    """Groups that do not divide every step's rows: a problem per sequence
    (5) and sequences sharing one (2, 3), by default or as `problems` says
    (a problem may have none), with and without recurrent dropout's scale and
    zoneout's weights, in float64, float32, bfloat16."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        assert_groups_match_problems_alone(_ops, groups, reverse=reverse, proj=4 * proj,
                                           dtype=dtype, tol=tol, problems=problems,
                                           **{option: True for option in options})


def jvp_args(proj=True, tangents=True):
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = [
        a.detach() if isinstance(a, torch.Tensor) else a for a in op_args(proj=proj)
    ]
    y, _, _, gates, cells = _ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    primals = [x, h0, c0, w_ih, w_hh, b_ih, w_hr]
    given = [torch.randn_like(p) if tangents and p is not None else None for p in primals]
    return [x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse, *given]


@pytest.mark.parametrize("proj", [False, True])
def test_opcheck_jvp(proj):
    torch.library.opcheck(_ops.lstm_layer_jvp, jvp_args(proj))
    torch.library.opcheck(_ops.lstm_layer_jvp, jvp_args(proj, tangents=False))


def test_bad_jvp_arguments_raise():
    args = jvp_args()
    with pytest.raises(RuntimeError, match=r"dx must have shape \[8, 4\]"):
        _ops.lstm_layer_jvp(*_replace(args, 11, torch.randn(ROWS, I + 1, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="dw_hh has dtype Float but x has dtype Double"):
        _ops.lstm_layer_jvp(*_replace(args, 15, args[15].float()))
    with pytest.raises(RuntimeError, match="dw_hr is given but w_hr is not"):
        _ops.lstm_layer_jvp(*_replace(jvp_args(proj=False), 17,
                                      torch.randn(H, H, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match=r"gates must have shape \[8, 20\]"):
        _ops.lstm_layer_jvp(*_replace(args, 8, args[8][:, :-1]))


def layer_loss(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    y, (h_n, c_n) = lstm_ext.lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, w_hr,
                                        batch_sizes=batch_sizes, reverse=True)
    return y.sin().sum() + h_n.square().sum() + c_n.sum()


@pytest.mark.parametrize("packed", [False, True])
def test_compile_fullgraph_matches_eager(packed):
    args = op_args()[:-1]
    x, bs = args[0], args[1]
    if not packed:
        x, bs = randn(4, B, I), None
    inputs = [x, *args[2:]]
    explained = torch._dynamo.explain(layer_loss)(*inputs, bs)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(layer_loss, fullgraph=True, backend=BACKEND)
    grads = []
    for fn in (layer_loss, compiled):
        loss = fn(*inputs, bs)
        grads.append((loss, *torch.autograd.grad(loss, inputs)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


# (argument index, bad value, part of the expected message)
BAD_FORWARD = [
    (0, torch.randn(2, ROWS, I, dtype=torch.float64), "x must be 2-D"),
    (0, torch.randn(ROWS, I, dtype=torch.float32), "w_ih has dtype Double but x has dtype Float"),
    (0, torch.randn(ROWS + 1, I, dtype=torch.float64), "batch_sizes sum to 8 but x has 9 rows"),
    (0, torch.randn(ROWS, I + 1, dtype=torch.float64), "w_ih must have shape [20, 5]"),
    (1, torch.tensor([4, 2, 1, 1]), "batch_sizes[0] = 4 but h0 and c0 have batch size 3"),
    (1, torch.tensor([2, 3, 2, 1]), "must be non-increasing"),
    (1, torch.tensor([3, 2, 3, 0]), "must be non-increasing"),
    (1, torch.tensor([3, 3, 2, 0]), "batch_sizes[3] = 0 must be positive"),
    (1, torch.tensor([3, 3, -2, 4]), "batch_sizes[2] = -2 must be positive"),
    (1, torch.tensor([3.0, 2.0, 2.0, 1.0]), "batch_sizes must be int64"),
    (1, torch.tensor([3, 2, 2, 1], dtype=torch.int32), "batch_sizes must be int64"),
    (1, BATCH_SIZES.view(2, 2), "batch_sizes must be 1-D"),
    (1, torch.tensor([], dtype=torch.int64), "batch_sizes is empty"),
    (2, torch.randn(B, P + 1, dtype=torch.float64), "h0 must have shape [3, 2]"),
    (2, torch.randn(1, B, P, dtype=torch.float64), "h0 must be 2-D"),
    (3, torch.randn(B + 1, H, dtype=torch.float64), "c0 must have shape [3, 5]"),
    (4, torch.randn(4 * H + 1, I, dtype=torch.float64), "w_ih must have shape [20, 4]"),
    (5, torch.randn(4 * H + 1, P, dtype=torch.float64), "w_hh must have 4 * hidden_size rows"),
    (5, torch.randn(4 * H, P, dtype=torch.float32), "w_hh has dtype Float"),
    (6, torch.randn(4 * H + 1, dtype=torch.float64), "b_ih must have shape [20]"),
    (7, torch.randn(4 * H, 1, dtype=torch.float64), "b_hh must be 1-D"),
    (8, torch.randn(P, H + 1, dtype=torch.float64), "w_hr must have shape [2, 5]"),
    (8, None, "w_hh must have shape [20, 5] without w_hr"),
]


@pytest.mark.parametrize(
    "index, value, message", BAD_FORWARD, ids=[f"arg{i}-{m}" for i, _, m in BAD_FORWARD]
)
def test_bad_forward_arguments_raise(index, value, message):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in op_args()]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        _ops.lstm_layer(*_replace(args, index, value))


def test_unsupported_dtype_raises():
    args = [a.detach().to(torch.int64) if isinstance(a, torch.Tensor) else a for a in op_args()]
    with pytest.raises(RuntimeError, match="dtype Long is not supported"):
        _ops.lstm_layer(*args)


def test_bad_backward_arguments_raise():
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = [
        a.detach() if isinstance(a, torch.Tensor) else a for a in op_args()
    ]
    y, _, c_n, gates, cells = _ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    saved = (x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse, [True] * 4)
    with pytest.raises(RuntimeError, match=r"dy must have shape \[8, 2\]"):
        _ops.lstm_layer_backward(torch.randn(ROWS, P + 1, dtype=y.dtype), None, None, *saved)
    with pytest.raises(RuntimeError, match=r"dc_n must have shape \[3, 5\]"):
        _ops.lstm_layer_backward(None, None, torch.randn(B, P, dtype=y.dtype), *saved)
    with pytest.raises(RuntimeError, match=r"gates must have shape \[8, 20\]"):
        _ops.lstm_layer_backward(None, None, None, *_replace(saved, 8, gates[:, :-1]))
    with pytest.raises(RuntimeError, match="y has dtype Float but x has dtype Double"):
        _ops.lstm_layer_backward(None, None, None, *_replace(saved, 7, y.float()))
    with pytest.raises(RuntimeError, match="cells is on meta but x is on cpu"):
        _ops.lstm_layer_backward(None, None, None, *_replace(saved, 9, cells.to("meta")))


def test_vmap_refuses_backward_problems():
    """vmap numbers the problems of a folded batch itself."""
    args = op_args(proj=False)
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = [
        a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    y, _, _, gates, cells = _ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)

    def backward(dy):
        return _ops.lstm_layer_backward(dy, None, None, x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates,
                                        cells, reverse, [False, True, True, False], B, None,
                                        torch.arange(B))

    with pytest.raises(ValueError, match="with `problems` is not supported"):
        torch.vmap(backward)(torch.randn(2, *y.shape, dtype=y.dtype))
