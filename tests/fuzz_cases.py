"""Fuzz cases for tests/test_fuzz.py, built and run inside a worker process so
that a crash shows up as a failed case, not as a dead test run. Cases are
plain data (picklable); everything about tensors happens here."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext
import module_reference
import variant_reference
from grouped_backward import assert_groups_match_problems_alone
from reference import tolerance

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
# bfloat16 and float16 are checked against nn.LSTM in float64 on the same
# (rounded) values: nn.LSTM's own run in them has errors of the same size as ours.
REDUCED_TOLERANCE = {torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
                     torch.float16: dict(rtol=5e-3, atol=5e-3)}
LAYOUTS = ("contiguous", "transposed", "expanded", "sliced")


@dataclasses.dataclass(frozen=True)
class ModuleCase:
    layers: int
    bidirectional: bool
    bias: bool
    proj: int
    batch_first: bool
    kind: str  # padded, packed (unsorted lengths), sorted, unbatched
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    dtype: str
    hx: bool
    layout: str  # of the input and the states
    weight_views: bool  # parameters replaced by strided views
    seed: int
    mutation: str = ""  # for invalid cases: what to break
    split: int = -1  # how the CPU shares a step between 2 threads: -1 as it chooses,
    # 0 by sequences, 1 by hidden units
    native: bool = True  # 16-bit: the native path where the CPU has it, else upcast
    weight_drop: float = 0.0  # lstm_ext.LSTM's option (nn.LSTM: the masked W_hh)
    recurrent_dropout: float = 0.0  # lstm_ext.LSTM's options (the cell loop's reference)
    zoneout_hidden: float = 0.0
    zoneout_cell: float = 0.0
    layer_norm: bool = False


def _tensor(shape, layout, dtype, gen):
    """A leaf and a tensor of `shape` made from it with the given memory layout."""
    if layout == "transposed" and len(shape) >= 2:
        leaf = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen, dtype=dtype)
        leaf.requires_grad_()
        return leaf, leaf.transpose(-1, -2)
    if layout == "expanded" and len(shape) >= 2:
        leaf = torch.randn(*shape[:-2], 1, shape[-1], generator=gen, dtype=dtype)
        leaf.requires_grad_()
        return leaf, leaf.expand(*shape)
    if layout == "sliced":
        leaf = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=dtype)
        leaf.requires_grad_()
        return leaf, leaf[..., ::2]
    leaf = torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()
    return leaf, leaf


class InFloat64(nn.Module):
    """nn.LSTM in float64 on inputs and states of a lower precision."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm.double()

    def forward(self, x, hx):
        if isinstance(x, PackedSequence):
            x = x._replace(data=x.data.double())
        else:
            x = x.double()
        return self.lstm(x, None if hx is None else tuple(t.double() for t in hx))


def _modules(c: ModuleCase):
    torch.manual_seed(c.seed)
    kwargs = dict(num_layers=c.layers, bias=c.bias, batch_first=c.batch_first,
                  bidirectional=c.bidirectional, proj_size=c.proj)
    ref = nn.LSTM(c.I, c.H, **kwargs).to(DTYPES[c.dtype])
    ours = lstm_ext.LSTM(c.I, c.H, **kwargs, weight_drop=c.weight_drop,
                         recurrent_dropout=c.recurrent_dropout, zoneout_hidden=c.zoneout_hidden,
                         zoneout_cell=c.zoneout_cell, layer_norm=c.layer_norm)
    ours = ours.to(DTYPES[c.dtype])
    ours.load_state_dict(ref.state_dict(), strict=not c.layer_norm)
    if DTYPES[c.dtype] in REDUCED_TOLERANCE:
        ref = InFloat64(ref)
    return ref, ours


def _weights(c: ModuleCase, module, gen):
    """Leaves and the parameter dict for functional_call (views when asked)."""
    leaves, params = [], {}
    for name, p in module.named_parameters():
        if c.weight_views:
            leaf, view = _tensor(tuple(p.shape), "sliced", p.dtype, gen)
            with torch.no_grad():
                leaf[..., ::2] = p
        else:
            leaf = view = p.detach().clone().requires_grad_()
        leaves.append(leaf)
        params[name] = view
    return leaves, params


def _inputs(c: ModuleCase, gen):
    dtype = DTYPES[c.dtype]
    D, P = (2 if c.bidirectional else 1), (c.proj or c.H)
    unbatched = c.kind == "unbatched"
    shape = (c.B, c.T, c.I) if c.batch_first else (c.T, c.B, c.I)
    if unbatched:
        shape = (c.T, c.I)
    x_leaf, x = _tensor(shape, c.layout, dtype, gen)
    lengths = torch.randint(1, c.T + 1, (c.B,), generator=gen)
    lengths[0] = c.T
    if c.kind == "sorted":
        lengths = lengths.sort(descending=True).values
    state = (c.layers * D, P) if unbatched else (c.layers * D, c.B, P)
    cell = state[:-1] + (c.H,)
    h_leaf, h0 = _tensor(state, c.layout, dtype, gen)
    c_leaf, c0 = _tensor(cell, c.layout, dtype, gen)
    if c.kind in ("packed", "sorted"):
        x = pack_padded_sequence(x, lengths, batch_first=c.batch_first,
                                 enforce_sorted=c.kind == "sorted")
    hx = (h0, c0) if c.hx else None
    return [x_leaf, h_leaf, c_leaf] if c.hx else [x_leaf], x, hx


def _run(module, params, x, hx, gen_seed):
    out, (h_n, c_n) = torch.func.functional_call(module, params, (x, hx))
    y = out.data if isinstance(out, PackedSequence) else out
    gen = torch.Generator().manual_seed(gen_seed)
    # The same weights whatever t's dtype: drawn in float64, bfloat16 values.
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64)
                .to(torch.bfloat16).to(t.dtype)).sum() for t in (y, h_n, c_n))
    return y, h_n, c_n, loss


def _configure(c: ModuleCase) -> dict:
    """Threads, split and 16-bit path as the case asks; its tolerance."""
    torch.set_num_threads(2)
    torch.ops.lstm_ext._cpu_split(c.split)
    torch.ops.lstm_ext._cpu_native_off(not c.native)
    return REDUCED_TOLERANCE.get(DTYPES[c.dtype]) or tolerance(DTYPES[c.dtype])


def _results(c: ModuleCase, module, edit=None) -> tuple[list, int]:
    """y, h_n, c_n, the gradients of the inputs then of the weights, and y, h_n,
    c_n again without grad (lstm_ext's inference path), the seed set before
    each call (masks repeat); `edit` may replace the weights (name -> tensor).
    Also how many gradients are the inputs'."""
    gen = torch.Generator().manual_seed(c.seed)
    leaves, x, hx = _inputs(c, gen)
    weight_leaves, params = _weights(c, module, gen)
    if edit is not None:
        params = edit(params)
    torch.manual_seed(c.seed)
    y, h_n, c_n, loss = _run(module, params, x, hx, c.seed)
    grads = torch.autograd.grad(loss, leaves + weight_leaves)
    torch.manual_seed(c.seed)
    with torch.no_grad():
        inference = _run(module, params, x, hx, c.seed)[:3]
    results = [y, h_n, c_n, *grads, *inference]
    if DTYPES[c.dtype] in REDUCED_TOLERANCE:
        results = [t.double() for t in results]
    return results, len(leaves)


def _assert_same(c: ModuleCase, ours: list, theirs: list, tol: dict) -> None:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"{c}: result {i}: {m}")


def check_valid(c: ModuleCase) -> None:
    """lstm_ext.LSTM equals nn.LSTM: outputs, final states and every gradient,
    and without grad (lstm_ext's inference path) the same outputs and states."""
    tol = _configure(c)
    ref, ours = _modules(c)
    _assert_same(c, _results(c, ours)[0], _results(c, ref)[0], tol)


def check_weight_drop(c: ModuleCase) -> None:
    """Training with weight_drop equals nn.LSTM run on W_hh ⊙ M / (1 - p), with
    M read off weight_hh's gradient (zero exactly where M is): outputs, final
    states and every gradient; without grad (the inference path) the same
    seed draws the same masks."""
    tol = _configure(c)
    ref, ours = _modules(c)
    results, inputs = _results(c, ours)
    names = [n for n, _ in ours.named_parameters()]
    masks = {name: (g[..., ::2] if c.weight_views else g) != 0
             for name, g in zip(names, results[3 + inputs:]) if "weight_hh" in name}

    def masked(params):
        return {name: w * masks[name.split(".")[-1]] / (1 - c.weight_drop)
                if "weight_hh" in name else w for name, w in params.items()}
    _assert_same(c, results, _results(c, ref, masked)[0], tol)


def check_cell_loop_options(c: ModuleCase) -> None:
    """Training with recurrent_dropout, zoneout and layer_norm equals the loop
    of cells of tests/variant_reference.py (float64) on the masks the same
    seed draws: outputs, final states and every gradient; without grad (the
    inference op) the same outputs and states."""
    tol = _configure(c)
    if c.layer_norm and DTYPES[c.dtype] == torch.float32:
        # Normalising divides by each row's spread, which with H <= 6 can be
        # small enough to amplify float32 rounding past 5e-4, differently per
        # CPU (a float32 loop of cells goes past it too); wrong logic errs by
        # orders more than 5e-3.
        tol = dict(rtol=5e-3, atol=5e-3)
    _, ours = _modules(c)
    results, _ = _results(c, ours)
    gen = torch.Generator().manual_seed(c.seed)
    leaves, x, hx = _inputs(c, gen)
    weight_leaves, params = _weights(c, ours, gen)
    torch.manual_seed(c.seed)
    y, (h_n, c_n) = _reference_with_masks(c, params, x, hx)
    y = y.data if isinstance(y, PackedSequence) else y
    gen = torch.Generator().manual_seed(c.seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64)
                .to(torch.bfloat16).double()).sum() for t in (y, h_n, c_n))
    grads = torch.autograd.grad(loss, leaves + weight_leaves)
    outputs = len(results) - 3
    _assert_same(c, [t.double() for t in results[:outputs]],
                 [t.double() for t in (y, h_n, c_n, *grads)], tol)
    _assert_same(c, results[outputs:], results[:3], tol)


def _reference_with_masks(c: ModuleCase, params: dict, x, hx):
    """The module's results from variant_reference's cell loop in float64, with
    the masks lstm_ext.lstm draws after the seed: recurrent dropout's first,
    of h0's shape (the batch in packed, sorted, order), then zoneout's, of
    h's and c's (the packed rows of every layer and direction)."""
    D, P = (2 if c.bidirectional else 1), c.proj or c.H
    unbatched, packed = c.kind == "unbatched", isinstance(x, PackedSequence)
    B = 1 if unbatched else c.B
    dtype = DTYPES[c.dtype]
    p = c.recurrent_dropout
    masks = torch.rand(c.layers * D, B, P).ge_(p).to(dtype).div_(1 - p) if p else None
    rows = x.data.shape[0] if packed else c.T * B
    zoneout = [torch.rand(c.layers * D, rows, width).lt_(z).double() if z else None
               for z, width in ((c.zoneout_hidden, P), (c.zoneout_cell, c.H))]
    if packed:
        padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(x)
        if x.unsorted_indices is not None and masks is not None:
            masks = masks.index_select(1, x.unsorted_indices)

        def time_major(m):
            return torch.nn.utils.rnn.pad_packed_sequence(PackedSequence(m, *x[1:]))[0]
    else:
        padded = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if c.batch_first else x)
        lengths = [padded.shape[0]] * padded.shape[1]

        def time_major(m):
            return m.view(c.T, B, -1)  # padded rows are time-major, batch_first or not
    # Each (T, B, *) in the input's sequence order, per layer and direction.
    zoneout = [None if z is None else [time_major(m) for m in z] for z in zoneout]
    if hx is None:
        h0 = torch.zeros(c.layers * D, B, P, dtype=torch.float64)
        c0 = torch.zeros(c.layers * D, B, c.H, dtype=torch.float64)
    else:
        h0, c0 = (t.unsqueeze(1) if unbatched else t for t in hx)
    case = module_reference.ModuleCase(layers=c.layers, bidirectional=c.bidirectional,
                                       bias=c.bias, proj=c.proj, H=c.H)
    suffixes = [f"_l{k}{d}" for k in range(c.layers) for d in ("", "_reverse")[:D]]
    weights = {name: w.double() for name, w in params.items()}
    y, h_n, c_n = variant_reference.reference_lstm(
        case, padded.double(), lengths, h0.double(), c0.double(), weights,
        {s: weights["weight_hh" + s] for s in suffixes},
        {} if masks is None else dict(zip(suffixes, masks.double())),
        {s: tuple(0 if z is None else z[k] for z in zoneout) for k, s in enumerate(suffixes)})
    if packed:
        y = torch.nn.utils.rnn.pack_padded_sequence(y, lengths,
                                                    enforce_sorted=x.sorted_indices is None)
    elif unbatched:
        y, h_n, c_n = y.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
    elif c.batch_first:
        y = y.transpose(0, 1)
    return y, (h_n, c_n)


def check_decode(c: ModuleCase) -> None:
    """Call after call without grad, the state carried as a decoder carries it:
    lstm_ext.LSTM keeps its weights' layouts between the calls, and an
    in-place edit of every weight before the third must show in it. The same
    outputs and states as nn.LSTM on the same state each call; with
    weight_views, the weights are strided views."""
    tol = _configure(c)
    ref, ours = _modules(c)
    gen = torch.Generator().manual_seed(c.seed)
    if c.weight_views:
        for module in (ref, ours):
            for p in module.parameters():
                holder = torch.empty(*p.shape[:-1], 2 * p.shape[-1], dtype=p.dtype)
                holder[..., ::2] = p.detach()
                p.data = holder[..., ::2]
    _, x, hx = _inputs(c, gen)
    hx = None if hx is None else tuple(t.detach() for t in hx)
    with torch.no_grad():
        for step in range(3):
            if step == 2:
                for module in (ref, ours):
                    for p in module.parameters():
                        p.mul_(-0.5)
            expected, got = ref(x, hx), ours(x, hx)
            for i, (a, b) in enumerate(zip((got[0], *got[1]), (expected[0], *expected[1]))):
                a, b = (a.data, b.data) if isinstance(a, PackedSequence) else (a, b)
                torch.testing.assert_close(a.to(b.dtype), b, **tol,
                                           msg=lambda m, i=i, s=step: f"{c}: step {s} #{i}: {m}")
            hx = got[1]
    assert ours.layout_cache_bytes() > 0


def check_forward_mode(c: ModuleCase) -> None:
    """Tangents of lstm_ext.LSTM's outputs and final states (torch.func.jvp,
    with tangents on every parameter, the states when given, and the input
    unless packed: packing has no forward-mode rule) equal nn.LSTM's. Those
    come from its reverse mode (the double-vjp trick), as nn.LSTM has no
    forward-mode rule for packed input. Tangents are the leaves'; the layouts
    are views of them, rebuilt inside the function."""
    tol = tolerance(DTYPES[c.dtype])
    ref, ours = _modules(c)
    results = []
    for module in (ours, ref):
        gen = torch.Generator().manual_seed(c.seed)
        leaves, x, hx = _inputs(c, gen)
        weight_leaves, params = _weights(c, module, gen)
        packed = isinstance(x, PackedSequence)
        views = [*params.values(), *(hx or ()), *([] if packed else [x])]
        leaves = [*weight_leaves, *leaves[1:], *([] if packed else leaves[:1])]

        def fn(*values, module=module, x=x, views=views, names=list(params)):
            values = [v.as_strided(view.shape, view.stride(), view.storage_offset())
                      for v, view in zip(values, views)]
            rest = values[len(names):]
            state = tuple(rest[:2]) if len(rest) >= 2 else None
            out, (h_n, c_n) = torch.func.functional_call(
                module, dict(zip(names, values)), (x if packed else rest[-1], state))
            return (out.data if packed else out), h_n, c_n

        primals = tuple(leaf.detach() for leaf in leaves)
        tangents = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in primals)
        if module is ours:
            results.append(torch.func.jvp(fn, primals, tangents)[1])
        else:
            results.append(torch.autograd.functional.jvp(fn, primals, tangents)[1])
    for i, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"{c}: tangent {i}: {m}")


MODULE_MUTATIONS = (
    "input_1d", "input_4d", "input_size", "input_int", "input_dtype", "hx_rank", "hx_batch",
    "hx_size", "cx_shape", "hx_dtype", "hx_layers", "empty_sequence",
)


def _mutate_module_input(c: ModuleCase, x, hx):
    data = x.data if isinstance(x, PackedSequence) else x
    other = torch.float64 if data.dtype == torch.float32 else torch.float32
    h0, c0 = hx if hx is not None else (None, None)
    m = c.mutation
    if m == "input_1d":
        return data.flatten(), hx
    if m == "input_4d":
        return data.unsqueeze(0).unsqueeze(0) if data.dim() == 2 else data.unsqueeze(0), hx
    if m == "input_size":
        data = torch.cat([data, data[..., :1]], -1)
    elif m == "input_int":
        data = data.long()
    elif m == "input_dtype":
        data = data.to(other)
    elif m == "empty_sequence":
        data = data[:0] if not c.batch_first or data.dim() == 2 else data[:, :0]
    if m.startswith("input_") or m == "empty_sequence":
        return x._replace(data=data) if isinstance(x, PackedSequence) else data, hx
    h0 = h0 if h0 is not None else torch.zeros(1)
    c0 = c0 if c0 is not None else torch.zeros(1)
    if m == "hx_rank":
        h0 = h0.unsqueeze(0)
    elif m == "hx_batch":
        h0 = torch.cat([h0, h0], -2)
    elif m == "hx_size":
        h0 = torch.cat([h0, h0[..., :1]], -1)
    elif m == "cx_shape":
        c0 = c0[..., :-1] if c0.shape[-1] > 1 else torch.cat([c0, c0], -1)
    elif m == "hx_dtype":
        h0, c0 = h0.to(other), c0.to(other)
    elif m == "hx_layers":
        h0, c0 = torch.cat([h0, h0]), torch.cat([c0, c0])
    return x, (h0, c0)


def _raised(module, x, hx):
    try:
        module(x, hx)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        return type(e).__name__
    return None


def check_invalid_module_input(c: ModuleCase) -> str:
    """lstm_ext.LSTM raises a Python exception for the mutated input, of
    nn.LSTM's type where nn.LSTM checks the input itself (not PackedSequence:
    there its errors come from whichever kernel fails first)."""
    ref, ours = _modules(c)
    gen = torch.Generator().manual_seed(c.seed)
    _, x, hx = _inputs(dataclasses.replace(c, hx=True), gen)
    x, hx = _mutate_module_input(c, x, hx)
    got = _raised(ours, x, hx)
    assert got is not None, f"{c}: no exception"
    if not isinstance(x, PackedSequence):
        expected = _raised(ref, x, hx)
        assert got == expected, f"{c}: raised {got}, nn.LSTM {expected}"
    return got


@dataclasses.dataclass(frozen=True)
class OpCase:
    rows_per_step: tuple[int, ...]
    I: int  # noqa: E741
    H: int
    proj: int
    argument: str
    mutation: str
    seed: int


OP_ARGUMENTS = ("x", "batch_sizes", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
OP_MUTATIONS = {
    "batch_sizes": ("increasing", "zero", "negative", "float", "int32", "sum_high", "sum_low",
                    "empty", "2d", "meta"),
    "tensor": ("rank_up", "rank_down", "size", "dtype", "int", "meta"),
}


def check_invalid_op_arguments(c: OpCase) -> str:
    """The op raises RuntimeError for the mutated argument."""
    gen = torch.Generator().manual_seed(c.seed)
    sizes = sorted(c.rows_per_step, reverse=True)
    P = c.proj or c.H

    def t(*shape):
        return torch.randn(*shape, generator=gen)

    args = dict(x=t(sum(sizes), c.I), batch_sizes=torch.tensor(sizes), h0=t(sizes[0], P),
                c0=t(sizes[0], c.H), w_ih=t(4 * c.H, c.I), w_hh=t(4 * c.H, P), b_ih=t(4 * c.H),
                b_hh=t(4 * c.H), w_hr=t(P, c.H) if c.proj else None)
    value, m = args[c.argument], c.mutation
    if c.argument == "batch_sizes":
        value = {
            "increasing": lambda: torch.tensor(sorted(sizes)) if len(set(sizes)) > 1
            else torch.tensor([sizes[0]] + [sizes[0] + 1] * (len(sizes) - 1) + [0]),
            "zero": lambda: torch.tensor(sizes + [0]),
            "negative": lambda: torch.tensor(sizes[:-1] + [-sizes[-1]]),
            "float": lambda: torch.tensor(sizes, dtype=torch.float32),
            "int32": lambda: torch.tensor(sizes, dtype=torch.int32),
            "sum_high": lambda: torch.tensor(sizes + [1]),
            "sum_low": lambda: torch.tensor(sizes[:-1]) if len(sizes) > 1 else torch.tensor([]),
            "empty": lambda: torch.tensor([], dtype=torch.int64),
            "2d": lambda: torch.tensor(sizes).view(1, -1),
            "meta": lambda: torch.tensor(sizes, device="meta"),
        }[m]()
    elif value is None:
        value = t(P, c.H + 1)  # a projection weight where P == H cannot be right
    else:
        value = {
            "rank_up": lambda: value.unsqueeze(0),
            "rank_down": lambda: value.flatten()[:1].squeeze() if value.dim() == 1 else value[0],
            "size": lambda: torch.cat([value, value[..., :1]], -1),
            "dtype": lambda: value.double(),
            "int": lambda: value.long(),
            "meta": lambda: value.to("meta"),
        }[m]()
    args[c.argument] = value
    try:
        lstm_ext._ops.lstm_layer(*args.values(), False)
    except RuntimeError as e:
        return str(e).splitlines()[0]
    raise AssertionError(f"{c}: no exception")


def check_nonfinite_propagates_like_nn_lstm(c: ModuleCase) -> None:
    """NaN and Inf are not errors for nn.LSTM either: they must reach the same
    outputs, and the finite ones must still agree."""
    ref, ours = _modules(c)
    gen = torch.Generator().manual_seed(c.seed)
    _, x, hx = _inputs(c, gen)
    data = (x.data if isinstance(x, PackedSequence) else x).detach().contiguous().clone()
    flat = data.view(-1)
    picks = torch.randint(0, flat.numel(), (2,), generator=gen)
    flat[picks[0]], flat[picks[1]] = float("nan"), float("inf")
    x = x._replace(data=data) if isinstance(x, PackedSequence) else data
    with torch.no_grad():
        results = [m(x, hx) for m in (ref, ours)]
    (out_r, (h_r, c_r)), (out_o, (h_o, c_o)) = results
    tol = tolerance(DTYPES[c.dtype])
    for a, b in ((out_o, out_r), (h_o, h_r), (c_o, c_r)):
        a, b = (a.data, b.data) if isinstance(a, PackedSequence) else (a, b)
        torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=lambda m: f"{c}: {m}")


def check_grouped_backward(c: ModuleCase) -> None:
    """The backward op's weight gradients per problem on the case's lengths
    (sorted, as packed), with one problem per sequence in a shuffled order
    (lstm_ext.opacus's per-sample gradients) or, for odd seeds, fewer: each
    equals that problem's backward alone. A bidirectional case runs reversed."""
    tol = _configure(c)
    gen = torch.Generator().manual_seed(c.seed)
    lengths = torch.randint(1, c.T + 1, (c.B,), generator=gen).sort(descending=True)[0]
    batch_sizes = (lengths.unsqueeze(0) > torch.arange(c.T).unsqueeze(1)).sum(1)
    per_sequence = c.seed % 2 == 0
    groups = c.B if per_sequence else 1 + c.seed // 2 % c.B
    problems = torch.randperm(c.B, generator=gen).tolist() if per_sequence else None
    assert_groups_match_problems_alone(
        torch.ops.lstm_ext, groups, reverse=c.bidirectional, proj=c.proj,
        dtype=DTYPES[c.dtype], tol=tol["rtol"], I=c.I, H=c.H,
        batch_sizes=batch_sizes[batch_sizes > 0], seed=c.seed, problems=problems)
