"""Loads the compiled ops and registers their fake (meta), autograd and vmap rules."""

import torch

from . import _C  # noqa: F401  (importing it registers torch.ops.lstm_ext)
from . import _autograd, _flops, _vmap

lstm_layer = torch.ops.lstm_ext.lstm_layer.default
lstm_layer_inference = torch.ops.lstm_ext.lstm_layer_inference.default
lstm_layer_backward = torch.ops.lstm_ext.lstm_layer_backward.default
lstm_layer_jvp = torch.ops.lstm_ext.lstm_layer_jvp.default
lstm_layer_lay_out = torch.ops.lstm_ext.lstm_layer_lay_out.default
lstm_inference = torch.ops.lstm_ext.lstm_inference.default


def _saved_cells_dtype(dtype: torch.dtype) -> torch.dtype:
    """The saved gates are in the input's dtype; the saved cells of float16 and
    bfloat16 in float (types.h)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_fake(x, batch_sizes, tensors, h0=None, rec_scale=None, zoneout_c=None,
                zoneout_h=None, c0=None):
    """What the kernels check first and shapes alone can tell: without it, fake
    (and meta) tensors of mixed devices or dtypes, or a rec_scale not of h0's
    shape (zoneout's weights not of x's rows and c0's or h0's width), would
    pass where the kernels raise."""
    for name, t in tensors.items():
        if t is None:
            continue
        torch._check(t.device == x.device,
                     lambda: f"lstm_layer: {name} is on {t.device} but x is on {x.device}")
        torch._check(t.dtype == x.dtype,
                     lambda: f"lstm_layer: {name} has dtype {t.dtype} but x has dtype {x.dtype}")
    torch._check(x.dim() == 2, lambda: f"lstm_layer: x must be 2-D, got {x.dim()}-D")
    torch._check(batch_sizes.device.type == "cpu" and batch_sizes.dtype == torch.int64,
                 lambda: "lstm_layer: batch_sizes must be an int64 CPU tensor")
    if rec_scale is not None:
        torch._check(rec_scale.shape == h0.shape,
                     lambda: f"lstm_layer: rec_scale must have shape {list(h0.shape)}, got "
                             f"{list(rec_scale.shape)}")
    for name, z, state in (("zoneout_c", zoneout_c, c0), ("zoneout_h", zoneout_h, h0)):
        if z is not None:
            shape = (x.shape[0], state.shape[1])
            torch._check(tuple(z.shape) == shape,
                         lambda: f"lstm_layer: {name} must have shape {list(shape)}, got "
                                 f"{list(z.shape)}")


def _lstm_layer_fake(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                     rec_scale=None, zoneout_c=None, zoneout_h=None, ln_ih=None, ln_hh=None,
                     ln_c_weight=None, ln_c_bias=None):
    _check_fake(x, batch_sizes, dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                                     w_hr=w_hr, rec_scale=rec_scale, zoneout_c=zoneout_c,
                                     zoneout_h=zoneout_h), h0, rec_scale, zoneout_c, zoneout_h,
                c0)
    rows, hidden, out = x.shape[0], w_hh.shape[0] // 4, w_hh.shape[1]
    # With zoneout on c, c̃ of every row follows c_t's.
    saved_rows = rows * (2 if zoneout_c is not None else 1)
    return (
        x.new_empty(rows, out),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        x.new_empty(rows, 4 * hidden),
        x.new_empty(saved_rows, hidden, dtype=_saved_cells_dtype(x.dtype)),
    )


def _lstm_layer_inference_fake(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                               kept_ih=None, kept_hh=None, kept_hr=None, kept_bias=None,
                               rec_scale=None, zoneout_c=None, zoneout_h=None, ln_ih=None,
                               ln_hh=None, ln_c_weight=None, ln_c_bias=None):
    y, h_n, c_n, _, _ = _lstm_layer_fake(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                         reverse, rec_scale, zoneout_c, zoneout_h, ln_ih, ln_hh,
                                         ln_c_weight, ln_c_bias)
    return y, h_n, c_n


def _lstm_layer_lay_out_fake(w_ih, w_hh, b_ih, b_hh, w_hr):
    raise RuntimeError(
        "lstm_layer_lay_out runs eagerly only: its layout depends on the device and CPU it "
        "runs on (lstm_ext.LSTM keeps it between eager calls, never while tracing)")


def _lstm_inference_fake(x, batch_sizes, h0, c0, weights, kept, has_biases, num_layers,
                         bidirectional):
    _check_fake(x, batch_sizes, dict(h0=h0, c0=c0, **{f"weights[{i}]": w
                                                      for i, w in enumerate(weights)}))
    directions = 2 if bidirectional else 1
    return (x.new_empty(x.shape[0], directions * h0.shape[2]), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape))


def _lstm_layer_backward_fake(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y,
                              gates, cells, reverse, output_mask, groups=1, rec_scale=None,
                              problems=None, zoneout_c=None, zoneout_h=None, ln_ih=None,
                              ln_hh=None, ln_c_weight=None, ln_c_bias=None):
    _check_fake(x, batch_sizes, dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, y=y,
                                     rec_scale=rec_scale, zoneout_c=zoneout_c,
                                     zoneout_h=zoneout_h), h0, rec_scale, zoneout_c, zoneout_h,
                c0)
    _check_saved_fake(x, gates, cells)
    saved_rows = x.shape[0] * (2 if zoneout_c is not None else 1)
    torch._check(cells.shape[0] == saved_rows,
                 lambda: f"lstm_layer: cells must have {saved_rows} rows, got {cells.shape[0]}")
    want_input, want_weights, want_bias, want_proj = output_mask

    def per_problem(t, *shape):
        return t.new_empty(*((groups,) if groups > 1 else ()), *shape)

    return (
        x.new_empty(x.shape) if want_input else None,
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        per_problem(w_ih, *w_ih.shape) if want_weights else None,
        per_problem(w_hh, *w_hh.shape) if want_weights else None,
        per_problem(w_hh, w_hh.shape[0]) if want_bias else None,
        per_problem(w_hr, *w_hr.shape) if want_proj and w_hr is not None else None,
        *(None if t is None else t.new_empty(t.shape)
          for t in (ln_ih, ln_hh, ln_c_weight, ln_c_bias)),
    )


def _lstm_layer_jvp_fake(x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse,
                         dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, rec_scale=None):
    _check_fake(x, batch_sizes, dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, y=y, dx=dx,
                                     dh0=dh0, dc0=dc0, dw_ih=dw_ih, dw_hh=dw_hh, db=db,
                                     dw_hr=dw_hr, rec_scale=rec_scale), h0, rec_scale)
    _check_saved_fake(x, gates, cells)
    return y.new_empty(y.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _check_saved_fake(x, gates, cells):
    for name, t in dict(gates=gates, cells=cells).items():
        torch._check(t.device == x.device,
                     lambda: f"lstm_layer: {name} is on {t.device} but x is on {x.device}")


_libraries = {}


def register(namespace: str):
    """Registers the fake, autograd and vmap rules and FLOP formulas of the ops in `namespace`:
    lstm_ext's, and those of lstm_ext_emu (the emulated CUDA build the tests
    load), which has the same schemas. Returns the layer's entry point (the
    op's signature), which works under every torch.func transform."""
    ops = getattr(torch.ops, namespace)
    torch.library.register_fake(f"{namespace}::lstm_layer", _lstm_layer_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_inference", _lstm_layer_inference_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_lay_out", _lstm_layer_lay_out_fake)
    torch.library.register_fake(f"{namespace}::lstm_inference", _lstm_inference_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_backward", _lstm_layer_backward_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_jvp", _lstm_layer_jvp_fake)
    # Registrations last as long as their Library object.
    lib = _libraries[namespace] = torch.library.Library(namespace, "IMPL")
    entry = _autograd.register(lib, namespace)
    # rec_scale's position (zoneout's follow it): after reverse, or after the kept layout.
    for name, rec_scale_at in (("lstm_layer", 10), ("lstm_layer_inference", 14)):
        torch.library.register_vmap(f"{namespace}::{name}",
                                    _vmap.layer_rule(getattr(ops, name).default, rec_scale_at),
                                    lib=lib)
    torch.library.register_vmap(f"{namespace}::lstm_layer_backward",
                                _vmap.backward_rule(ops.lstm_layer_backward.default), lib=lib)
    torch.library.register_vmap(f"{namespace}::lstm_layer_jvp",
                                _vmap.jvp_rule(ops.lstm_layer_jvp.default), lib=lib)
    _flops.register(namespace)
    return entry


# The layer's entry point: lstm_layer's arguments; y, h_n and c_n, by
# whichever op serves.
layer_entry = register("lstm_ext")


@torch.library.custom_op("lstm_ext::packed_zeros", mutates_args=())
def packed_zeros(
    batch_sizes: torch.Tensor, groups: int, size: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Zeros (groups, batch_sizes[0], size): the default state of packed input.

    Its batch size is data (batch_sizes[0]); as an op with a fake rule it stays
    in a compiled graph as one unbacked size, where reading batch_sizes[0] in
    Python would break the graph.
    """
    batch = int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
    return torch.zeros(groups, batch, size, dtype=dtype, device=device)


@packed_zeros.register_fake
def _packed_zeros_fake(batch_sizes, groups, size, dtype, device):
    batch = torch.library.get_ctx().new_dynamic_size()
    return torch.empty(groups, batch, size, dtype=dtype, device=device)
