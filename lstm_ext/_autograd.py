"""The derivatives of lstm_ext::lstm_layer, in every autograd mode.

`Layer`, an autograd.Function over the op, carries the rules:

- backward: the fused backward op; jvp (forward-mode AD): the fused tangent
  op, whose own backward (reverse mode over forward mode) is the composite's;
- vmap: generated (the rules run on batched tensors), and the ops' batching
  rules (_vmap.py) fold the mapped dimension into the batch;
- when a gradient or tangent will itself be differentiated (create_graph=True,
  or an enclosing grad or jvp transform, as in hessian or jacrev(jacfwd(f))):
  _composite.py, the layer in PyTorch's own differentiable ops.

torch.func sees an autograd.Function only when it is applied above the
dispatcher, so `register` returns the entry point the functional API calls:
the inference op where nothing can ask for a derivative (it saves nothing for
a backward), `Layer.apply` under a torch.func transform, the op otherwise. The op's own
Autograd kernel applies the same rules for autograd and forward-mode AD
(which is all torch.compile sees), and its batching rule under vmap alone;
under a torch.func grad or jvp transform the raw op raises rather than drop
the derivative. The backward and tangent ops have no derivatives: they raise
wherever their results could be differentiated.
"""

from __future__ import annotations

import contextvars

import torch
from torch._C import _functorch
from torch.autograd import forward_ad

from . import _composite


def _innermost(tensors):
    """The tensors with the current torch.func level's wrappers, dead ones and
    vmap's taken off, and whether an enclosing (lower) grad or jvp level tracks
    one of them."""
    # Outside any transform only dead wrappers can remain (a vjp's pullback
    # called after its transform returned).
    level = _functorch.maybe_current_level()
    inner = []
    for t in tensors:
        if t is None:
            continue
        while _functorch.is_gradtrackingtensor(t) or _functorch.is_batchedtensor(t):
            if (level is not None and _functorch.is_gradtrackingtensor(t)
                    and not _functorch.is_dead_tensor_wrapper(t)
                    and _functorch.maybe_get_level(t) < level):
                return inner, True
            t = _functorch.get_unwrapped(t)
        inner.append(t)
    return inner, False


# Where set (lstm_ext/opacus.py sets it around a module's forward), each layer
# run under autograd takes its weights' gradients per sequence in its backward
# and passes them to this sink: sink(weights, per_sample), the per-sample
# gradients times sink.scale, sequence s of the packed batch at
# sink.problems[s] (None: at s), for the sink to keep or change; autograd
# gets their sums.
per_sample_sink: contextvars.ContextVar = contextvars.ContextVar("per_sample_sink",
                                                                 default=None)


def _per_sample_backward(sink, layer_backward, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih,
                         w_hh, b_ih, b_hh, w_hr, y, gates, cells, reverse, mask, rec_scale,
                         zoneout_c, zoneout_h, layer_norm):
    """The backward op with one problem per sequence (groups = B): the
    results autograd takes, the per-sample weight gradients to the sink. The
    incoming gradients take sink.scale (and the results autograd takes lose
    it): they are smaller than the per-sample gradients."""
    scale = sink.scale
    if scale != 1:
        dy, dh_n, dc_n = (None if g is None else g * scale for g in (dy, dh_n, dc_n))
    groups = h0.shape[0]
    dx, dh0, dc0, *weights = layer_backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh,
                                            w_hr, y, gates, cells, reverse, mask, groups,
                                            rec_scale, sink.problems, zoneout_c, zoneout_h,
                                            *layer_norm)
    per_sample = [None if g is None else g if groups > 1 else g.unsqueeze(0) for g in weights]
    summed = [None if g is None else g.sum(0) for g in per_sample]
    dw_ih, dw_hh, db, dw_hr, *d_layer_norm = per_sample
    # Each its own tensor: the sink may change them in place.
    sink((w_ih, w_hh, b_ih, b_hh, w_hr, *layer_norm),
         (dw_ih, dw_hh, db, None if db is None else db.clone(), dw_hr, *d_layer_norm))
    if scale != 1:
        dx, dh0, dc0, *summed = (None if g is None else g.div_(scale)
                                 for g in (dx, dh0, dc0, *summed))
    return (dx, dh0, dc0, *summed)


def _any_requires_grad(*args) -> bool:
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in args)


# torch's own form, where it has one (not in 2.6), is faster.
_any_requires_grad = getattr(torch._C, "_any_requires_grad", _any_requires_grad)


def _routes(tensors):
    """Who can differentiate a result computed from `tensors`: (an enclosing
    torch.func grad or jvp transform, autograd (grad mode on and one requires
    grad), forward-mode AD (a dual level pushes a tangent through one))."""
    inner, transform = _innermost(tensors)
    if transform:
        return True, False, False
    autograd = torch.is_grad_enabled() and _any_requires_grad(*inner)
    forward = (forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled()
               and any(forward_ad.unpack_dual(t).tangent is not None for t in inner))
    return False, autograd, forward


def _differentiating_transform_active() -> bool:
    """Whether a torch.func grad or jvp transform is active (vmap alone is not)."""
    stack = _functorch.get_interpreter_stack() or ()
    return any(i.key() in (_functorch.TransformType.Grad, _functorch.TransformType.Jvp)
               for i in stack)


def _below_autograd(op):
    def call(keyset, *args):
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    return call


def _layer_functions(layer, layer_backward, layer_jvp):
    """The autograd.Functions over one namespace's ops: for torch.func, and for
    the rest."""

    class Layer(torch.autograd.Function):
        # vmap runs these rules on batched tensors, and the ops' own batching
        # rules fold the mapped dimension into the batch.
        generate_vmap_rule = True

        # rec_scale (recurrent dropout's mask over 1 - p) and zoneout's weights
        # are constants: no derivative is taken or passed for them.
        @staticmethod
        def forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                    rec_scale=None, zoneout_c=None, zoneout_h=None, ln_ih=None, ln_hh=None,
                    ln_c_weight=None, ln_c_bias=None):
            with torch._C._AutoDispatchBelowAutograd():
                return layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                             rec_scale, zoneout_c, zoneout_h, ln_ih, ln_hh, ln_c_weight,
                             ln_c_bias)

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, *rest = inputs
            y, _, _, gates, cells = output
            ctx.mark_non_differentiable(gates, cells)
            # Unused outputs arrive as None rather than as zero tensors of their size.
            ctx.set_materialize_grads(False)
            # rec_scale, zoneout_c, zoneout_h, and LayerNorm's four.
            options = (*rest, *(None,) * 7)[:7]
            saved = (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells,
                     *options)
            ctx.save_for_backward(*saved)
            ctx.save_for_forward(*saved)
            ctx.reverse = reverse
            ctx.inputs = len(inputs)
            ctx.per_sample = per_sample_sink.get()

        @staticmethod
        def backward(ctx, dy, dh_n, dc_n, _dgates, _dcells):
            (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells, rec_scale,
             zoneout_c, zoneout_h, *layer_norm) = ctx.saved_tensors
            inputs = (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ctx.reverse,
                      rec_scale, zoneout_c, zoneout_h, *layer_norm)
            need = (*ctx.needs_input_grad, *(False,) * 17)[:17]
            if any(_routes((*inputs[:9], dy, dh_n, dc_n))):
                if ctx.per_sample is not None:
                    raise RuntimeError("lstm_ext: per-sample gradients (Opacus) of a backward "
                                       "that is itself differentiated are not supported")
                return _composite.vjp(inputs, (dy, dh_n, dc_n), need)[: ctx.inputs]
            mask = [need[0], need[4] or need[5], need[6] or need[7], need[8]]
            # (The backward op makes LayerNorm's gradients whatever the mask.)
            per_sample_work = any(mask[1:]) or any(need[13:])
            if ctx.per_sample is not None and per_sample_work:
                dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, *d_layer_norm = _per_sample_backward(
                    ctx.per_sample, layer_backward, dy, dh_n, dc_n, x, batch_sizes, h0, c0,
                    w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells, ctx.reverse, mask, rec_scale,
                    zoneout_c, zoneout_h, layer_norm)
            else:
                dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, *d_layer_norm = layer_backward(
                    dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
                    ctx.reverse, mask, 1, rec_scale, None, zoneout_c, zoneout_h, *layer_norm)
            return (dx, None, dh0 if need[2] else None, dc0 if need[3] else None,
                    dw_ih if need[4] else None, dw_hh if need[5] else None,
                    db if need[6] else None, db if need[7] else None, dw_hr, None,
                    None, None, None,
                    *(g if n else None for g, n in zip(d_layer_norm, need[13:])))[: ctx.inputs]

        @staticmethod
        def jvp(ctx, dx, _, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, *rest):
            (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, gates, cells, rec_scale,
             zoneout_c, zoneout_h, *layer_norm) = ctx.saved_tensors
            # After reverse's, rec_scale's and zoneout's (constants): LayerNorm's.
            t_layer_norm = (*rest[4:], None, None, None, None)[:4]
            tangents = (dx, None, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None, None,
                        None, *t_layer_norm)
            inputs = (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ctx.reverse,
                      rec_scale, zoneout_c, zoneout_h, *layer_norm)
            # The tangents being pushed are this jvp's own: forward-mode AD
            # does not differentiate them again (it cannot nest).
            transform, autograd, _ = _routes((*inputs[:9], *tangents))
            zoneout = (zoneout_c is not None or zoneout_h is not None
                       or layer_norm[0] is not None)
            if transform or (zoneout and torch._C._are_functorch_transforms_active()):
                t_y, t_h_n, t_c_n = _composite.jvp(inputs, tangents)
            elif zoneout:
                # The tangent op has no zoneout nor LayerNorm: the composite's
                # tangents, by reverse mode (forward-mode AD cannot nest here).
                t_y, t_h_n, t_c_n = _composite.jvp_by_vjp(inputs, tangents, autograd)
            elif autograd:
                # The tangents can be differentiated by autograd (with
                # parameters that require grad, they always can): fused, with
                # a backward from the composite.
                t_y, t_h_n, t_c_n = Tangent.apply(ctx.reverse, rec_scale, y, gates, cells,
                                                  *inputs[:9], *tangents[:9])
            else:
                t_y, t_h_n, t_c_n = fused_jvp(ctx.reverse, rec_scale, y, gates, cells,
                                              *inputs[:9], *tangents[:9])
            return t_y, t_h_n, t_c_n, None, None

    def fused_jvp(reverse, rec_scale, y, gates, cells, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                  b_hh, w_hr, dx, _, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr):
        db = db_ih if db_hh is None else db_hh if db_ih is None else db_ih + db_hh
        return layer_jvp(x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse, dx,
                         dh0, dc0, dw_ih, dw_hh, db, dw_hr, rec_scale)

    class Tangent(torch.autograd.Function):
        """The fused tangents as a function of the layer's inputs and their
        tangents, for reverse-mode AD over forward-mode AD."""

        generate_vmap_rule = True

        @staticmethod
        def forward(reverse, rec_scale, y, gates, cells, *inputs_and_tangents):
            with torch._C._AutoDispatchBelowAutograd():
                return fused_jvp(reverse, rec_scale, y, gates, cells, *inputs_and_tangents)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.reverse = inputs[0]
            ctx.save_for_backward(inputs[1], *inputs[5:])

        @staticmethod
        def backward(ctx, *cotangents):
            rec_scale, *saved = ctx.saved_tensors
            inputs, tangents = (*saved[:9], ctx.reverse, rec_scale), (*saved[9:], None)
            grads = _composite.tangent_vjp(inputs, tangents, cotangents,
                                           ctx.needs_input_grad[5:])
            return (None, None, None, None, None, *grads)

    class EagerLayer(torch.autograd.Function):
        """Layer's rules in autograd.Function's older form, whose forward takes
        ctx: its apply binds no signature per call (5 us of a 35 us call).
        Outside torch.func, where that form serves, the op's Autograd kernel
        applies it."""

        @staticmethod
        def forward(ctx, *args):
            output = Layer.forward(*args)
            Layer.setup_context(ctx, args, output)
            return output

        backward = staticmethod(Layer.backward)
        jvp = staticmethod(Layer.jvp)

    return Layer, EagerLayer


def _without_derivative(name, op):
    """The Autograd kernel of an op with no derivative: it runs where nothing can
    differentiate its results, and raises otherwise."""
    below = _below_autograd(op)

    def kernel(keyset, *args):
        tensors = [t for a in args for t in (a if isinstance(a, (list, tuple)) else (a,))
                   if isinstance(t, torch.Tensor)]
        if any(_routes(tensors)):
            raise RuntimeError(
                f"{name} has no derivative: differentiate lstm_ext::lstm_layer instead (its "
                "rules cover double backward, forward-mode AD and torch.func transforms)"
            )
        return below(keyset, *args)

    return kernel


def register(lib: torch.library.Library, namespace: str):
    """Registers the Autograd kernels of the ops in `namespace` with `lib`, and
    returns the entry point: the op's signature, in every autograd mode."""
    ops = getattr(torch.ops, namespace)
    layer = ops.lstm_layer.default
    Layer, EagerLayer = _layer_functions(layer, ops.lstm_layer_backward.default,
                                         ops.lstm_layer_jvp.default)
    below = _below_autograd(layer)

    def layer_kernel(keyset, *args):
        if torch._C._are_functorch_transforms_active():
            if _differentiating_transform_active():
                raise RuntimeError(
                    f"{namespace}::lstm_layer called as an op under a torch.func grad or jvp "
                    "transform, which cannot see its derivatives from there: call "
                    "lstm_ext.lstm_layer, lstm_ext.lstm or lstm_ext.LSTM instead")
            return below(keyset, *args)
        if forward_ad._current_level >= 0 or (
                torch.is_grad_enabled() and _any_requires_grad(*args)):
            return EagerLayer.apply(*args)
        return below(keyset, *args)

    lib.impl("lstm_layer", layer_kernel, "Autograd", with_keyset=True)
    for name in ("lstm_layer_inference", "lstm_layer_lay_out", "lstm_inference",
                 "lstm_layer_backward", "lstm_layer_jvp"):
        op = getattr(ops, name).default
        lib.impl(name, _without_derivative(f"{namespace}::{name}", op), "Autograd",
                 with_keyset=True)
    inference = ops.lstm_layer_inference.default

    def entry(*args):
        """y, h_n, c_n: by the inference op where nothing can ask for a
        derivative, else by the layer, through Layer under torch.func."""
        compiling = torch.compiler.is_compiling()
        transforms = not compiling and torch._C._are_functorch_transforms_active()
        autograd = torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if transforms and (autograd or _differentiating_transform_active()):
            return Layer.apply(*args)[:3]
        if autograd or (not compiling and forward_ad._current_level >= 0):
            return layer(*args)[:3]
        # The inference op's rec_scale and zoneout come after its kept layout.
        args = (*args[:10], None, None, None, None, *args[10:])
        if compiling:
            return inference(*args)
        # Nothing can differentiate it: past its Autograd kernel (which would
        # check again).
        with torch._C._AutoDispatchBelowAutograd():
            return inference(*args)

    return entry
