"""Opacus (differentially private training) on lstm_ext.LSTM: ``import
lstm_ext.opacus`` before ``PrivacyEngine.make_private`` or ``GradSampleModule``.

Opacus's hooks see a module's inputs and the gradient of its first output
only: an LSTM's per-sample gradients also need those of h_n and c_n, and its
inputs may be a PackedSequence and a tuple of states. So Opacus's hooks pass
lstm_ext.LSTM by, and the module's own backward supplies them instead: each
layer's backward op runs with one problem per sequence (``groups`` = B) and
hands the weights' per-sample gradients to Opacus's accumulation, in one
fused pass for the whole batch. That holds in Opacus's ``hooks`` and
``functorch`` modes alike (the latter is Opacus's way for layers it has no
rule for; this is one). Its ghost clipping and expanded-weights modes are
refused with an error naming them.

Importing it changes two methods of Opacus's ``GradSampleHooks``
(``iterate_submodules`` and ``add_hooks``) and the expanded-weights module's
constructor, for every model; models without lstm_ext.LSTM are treated as
before. Written against Opacus 1.6.
"""

from __future__ import annotations

import functools

import torch
from opacus.grad_sample import grad_sample_module as _gsm
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
)
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from torch.nn.utils.rnn import PackedSequence

from . import _autograd
from .module import LSTM

_iterate_submodules = _gsm.GradSampleHooks.iterate_submodules
_add_hooks = _gsm.GradSampleHooks.add_hooks


def _passing_lstms(self, module):
    """Opacus's walk over the modules it hooks, less the LSTMs it reaches
    (noted for add_hooks), while add_hooks runs."""
    found = self.__dict__.get("_lstm_ext_found")
    for m in _iterate_submodules(self, module):
        if found is not None and isinstance(m, LSTM):
            found.append(m)
        else:
            yield m


def _add_hooks_and_ours(self, *, loss_reduction: str = "mean", batch_first: bool = True,
                        force_functorch: bool = False) -> None:
    if isinstance(self, GradSampleHooksFastGradientClipping) and any(
            isinstance(m, LSTM) for m in self._module.modules()):
        raise NotImplementedError(
            f"lstm_ext.opacus: Opacus's ghost clipping ({type(self).__name__}) has no rule for "
            "lstm_ext.LSTM; use grad_sample_mode='hooks' or 'functorch'")
    self.__dict__["_lstm_ext_found"] = found = []
    try:
        _add_hooks(self, loss_reduction=loss_reduction, batch_first=batch_first,
                   force_functorch=force_functorch)
    finally:
        del self.__dict__["_lstm_ext_found"]
    for module in found:
        handles = self._module.autograd_grad_sample_hooks
        handles.append(module.register_forward_pre_hook(
            functools.partial(_enter, hooks=self, loss_reduction=loss_reduction),
            with_kwargs=True))
        handles.append(module.register_forward_hook(_admit))
        handles.append(module.register_forward_hook(_leave, always_call=True))


def _trainable(module):
    return [p for p in module.parameters() if p.requires_grad]


def _enter(module: LSTM, args, kwargs, *, hooks, loss_reduction: str) -> None:
    """Before the module's forward: where Opacus would capture activations,
    the per-sample sink for this call's layers."""
    sink = _sink_for(module, args[0] if args else kwargs["input"], hooks, loss_reduction)
    token = None if sink is None else _autograd.per_sample_sink.set(sink)
    module.__dict__.setdefault("_lstm_ext_calls", []).append((token, sink))


def _sink_for(module: LSTM, input, hooks, loss_reduction: str):
    params = _trainable(module)
    if not (hooks.hooks_enabled and module.training and torch.is_grad_enabled() and params):
        return None
    if module.weight_drop > 0:
        raise NotImplementedError(
            "lstm_ext.opacus: weight_drop has no per-sample gradients here (its mask makes "
            "each layer's weight a new tensor); train privately without it")
    if isinstance(input, PackedSequence):
        # The layers' sequence s is the batch's sorted_indices[s]: the backward
        # puts its gradients there.
        batch, problems = int(input.batch_sizes[0]), input.sorted_indices
        problems = None if problems is None else problems.cpu()
    else:
        if torch.is_autocast_enabled(input.device.type):
            # Autocast would hand the layers cast copies of the weights.
            raise NotImplementedError(
                "lstm_ext.opacus: per-sample gradients under torch.autocast are not supported "
                "for padded input (the layers would run on cast copies of the parameters)")
        batch = input.shape[0 if module.batch_first else 1] if input.dim() == 3 else 1
        problems = None
    if batch == 0:
        # An empty batch (Poisson sampling draws them) runs no layer, so no
        # backward will bring its (empty) per-sample gradients: here they are.
        for p in params:
            if p._forward_counter == 0:
                p._current_grad_sample = p.new_zeros((0, *p.shape))
                _gsm.promote_current_grad_sample(p)
        return None
    return _Sink(module, params, hooks, batch, problems, loss_reduction)


def _admit(module: LSTM, _args, _output) -> None:
    """After a forward that returned: its backward is now owed (Opacus counts
    only forwards that got as far as its hook)."""
    _, sink = module.__dict__["_lstm_ext_calls"][-1]
    if sink is not None:
        sink.admit()


def _leave(module: LSTM, _args, _output) -> None:
    calls = module.__dict__.get("_lstm_ext_calls")
    token, _ = calls.pop() if calls else (None, None)  # none if _enter raised
    if token is not None:
        _autograd.per_sample_sink.reset(token)


class _Sink:
    """Takes each layer's per-sample gradients into Opacus's per-parameter
    accumulation, as its own hooks would."""

    def __init__(self, module, params, hooks, batch, problems, loss_reduction):
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction = {loss_reduction}. Only 'sum' and 'mean' losses "
                             "are supported")
        self.params, self.hooks, self.batch, self.problems = params, hooks, batch, problems
        self.mean = loss_reduction == "mean"
        # The largest batch of the module's calls whose backward is owed:
        # Opacus's max_batch_len.
        self.largest = module.__dict__.setdefault("_lstm_ext_largest_batch", [0])

    def admit(self):
        if all(p._forward_counter == 0 for p in self.params):
            self.largest[0] = 0
        self.largest[0] = max(self.largest[0], self.batch)
        for p in self.params:
            p._forward_counter += 1

    @property
    def scale(self):
        """Opacus's per-sample gradients are of each sample's own loss: a mean's
        gradient times the batch size (the layers' backward applies it)."""
        return self.largest[0] if self.mean else 1

    def __call__(self, weights, per_sample):
        if not self.hooks.hooks_enabled:  # as Opacus's own backward hook
            return
        n, ids = self.largest[0], {id(p) for p in self.params}
        for weight, grads in zip(weights, per_sample, strict=True):
            if weight is None or not weight.requires_grad:
                continue
            if id(weight) not in ids:
                raise RuntimeError("lstm_ext.opacus: a layer's weight is not the module's "
                                   "parameter (a parametrization?): no per-sample gradient")
            grads = grads.to(weight.dtype)
            if hasattr(weight, "_current_grad_sample") or len(grads) != n:
                _gsm.create_or_accumulate_grad_sample(param=weight, grad_sample=grads,
                                                      max_batch_len=n)
            else:  # the same, less its copy into zeros of this size
                weight._current_grad_sample = grads
            weight._forward_counter -= 1
            if weight._forward_counter == 0:
                _gsm.promote_current_grad_sample(weight)
            if (not self.hooks.grad_accumulation_allowed and isinstance(weight.grad_sample, list)
                    and len(weight.grad_sample) > 1):
                raise ValueError(
                    "Poisson sampling is not compatible with grad accumulation. You need to call "
                    "optimizer.step() after every forward/backward pass or consider using "
                    "BatchMemoryManager")


def _refusing_lstms(init):
    @functools.wraps(init)
    def wrapper(self, m, *args, **kwargs):
        if any(isinstance(module, LSTM) for module in m.modules()):
            raise NotImplementedError(
                "lstm_ext.opacus: Opacus's expanded weights (grad_sample_mode='ew') cannot run "
                "lstm_ext.LSTM; use grad_sample_mode='hooks' or 'functorch'")
        init(self, m, *args, **kwargs)

    return wrapper


_gsm.GradSampleHooks.iterate_submodules = _passing_lstms
_gsm.GradSampleHooks.add_hooks = _add_hooks_and_ours
GradSampleModuleExpandedWeights.__init__ = _refusing_lstms(GradSampleModuleExpandedWeights.__init__)
