"""lstm_ext.LSTM: torch.nn.LSTM with its forward computed by the fused op."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from ._checks import ZONED_OUT, probability
from ._layouts import KeptLayouts


# The options beyond nn.LSTM, as the module's attributes (a module pickled
# before one existed loads with its default).
_OPTIONS = ("layer_norm", "weight_drop", "recurrent_dropout", "zoneout_hidden", "zoneout_cell")

# LayerNorm's parameters of each layer and direction (their suffix follows),
# of 4H, 4H, H and H values, and their initial value.
_LAYER_NORM = (("ln_ih_weight", 4, 1.0), ("ln_hh_weight", 4, 1.0), ("ln_c_weight", 1, 1.0),
               ("ln_c_bias", 1, 0.0))


class LSTM(nn.LSTM):
    """A drop-in replacement for ``torch.nn.LSTM``.

    Everything but ``forward`` is nn.LSTM's own: constructor and its checks,
    parameters (names, shapes, order, initialisation), ``state_dict``,
    ``reset_parameters``, ``extra_repr``. ``forward`` takes and returns what
    nn.LSTM's does and runs ``lstm_ext.lstm`` on ``self._flat_weights``.

    Where no derivative can be asked for (under ``torch.no_grad()`` or
    ``torch.inference_mode()``, or with nothing requiring grad), the module
    keeps its weights laid out for the products between calls, as long as
    they are unchanged (lstm_ext/_layouts.py says what counts as a change):
    about the weights' size again (twice it for bfloat16/float16 that run
    upcast), reported by ``layout_cache_bytes()``. ``flatten_parameters()``
    drops it; so do ``.to()`` and the other conversions.

    Beyond nn.LSTM, keyword-only (the default is nn.LSTM exactly):

    - ``layer_norm=True`` (haste's LayerNormLSTM): each layer and direction
      normalises its input and recurrent products over the 4H gates
      (``LN(x W_ih^T; γ_ih) + LN(h W_hh^T; γ_hh) + b_ih + b_hh``, scales
      without a shift) and c̃ over H before its tanh (``h̃ = σ(o)·tanh(LN(c̃;
      γ_c, β_c))``); parameters ``ln_ih_weight_l{k}``, ``ln_hh_weight_l{k}``
      (4H, ones), ``ln_c_weight_l{k}`` (H, ones), ``ln_c_bias_l{k}`` (H,
      zeros), ``_reverse`` for the second direction.
    - ``weight_drop=p`` (DropConnect on the recurrent weights, as AWD-LSTM
      has it): in training, each layer and direction multiplies
      ``W_hh ⊙ M / (1 - p)`` instead of ``W_hh``, with one Bernoulli(1 - p)
      mask M over W_hh's elements drawn from torch's generator per forward
      call, shared by every step and sequence. In eval, ``W_hh``. The
      parameter stays ``weight_hh_l{k}``; its gradient is zero where M is.
    - ``recurrent_dropout=p`` (variational, Gal and Ghahramani): in training,
      h enters each layer's and direction's recurrent product as
      ``h ⊙ m / (1 - p)``, one Bernoulli(1 - p) mask m per sequence and unit
      drawn per forward call, the same at every step (h0 included); the
      output and the next layer see h. In eval, h.
    - ``zoneout_hidden=p_h``, ``zoneout_cell=p_c`` (Krueger et al.): in
      training, at every step, sequence and unit, ``h_t = d ⊙ h_{t-1} +
      (1 - d) ⊙ h̃_t`` with d ~ Bernoulli(p_h) (h̃ the LSTM's new h, after
      the projection if any), and ``c_t`` likewise from c̃ with p_c; in eval,
      d = p (the expectation). The output at step t is h_t.
    """

    def __init__(self, *args, layer_norm: bool = False, weight_drop: float = 0.0,
                 recurrent_dropout: float = 0.0, zoneout_hidden: float = 0.0,
                 zoneout_cell: float = 0.0, **kwargs) -> None:
        if not isinstance(layer_norm, bool):
            raise ValueError(f"layer_norm should be a bool, got {layer_norm!r}")
        super().__init__(*args, **kwargs)
        self.layer_norm = layer_norm
        if layer_norm:
            like = self._flat_weights[0]
            for suffix in self._suffixes():
                for name, units, _ in _LAYER_NORM:
                    self.register_parameter(name + suffix, nn.Parameter(
                        like.new_empty(units * self.hidden_size)))
            self._reset_layer_norm()
        self.weight_drop = probability("weight_drop", weight_drop)
        self.recurrent_dropout = probability("recurrent_dropout", recurrent_dropout)
        self.zoneout_hidden = probability("zoneout_hidden", zoneout_hidden, ZONED_OUT)
        self.zoneout_cell = probability("zoneout_cell", zoneout_cell, ZONED_OUT)

    def _suffixes(self) -> list[str]:
        return [f"_l{k}{d}" for k in range(self.num_layers)
                for d in ("", "_reverse")[: 2 if self.bidirectional else 1]]

    def layer_norm_weights(self) -> list[Tensor]:
        """LayerNorm's parameters in lstm_ext.lstm's order: per layer, per
        direction, ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias."""
        return [getattr(self, name + suffix) for suffix in self._suffixes()
                for name, _, _ in _LAYER_NORM]

    def _reset_layer_norm(self) -> None:
        with torch.no_grad():
            for suffix in self._suffixes():
                for name, _, value in _LAYER_NORM:
                    getattr(self, name + suffix).fill_(value)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # nn.LSTM's uniform init covers every parameter; LayerNorm's start as
        # the identity. (Called by nn.LSTM's constructor, before they exist.)
        if getattr(self, "layer_norm", False):
            self._reset_layer_norm()

    def flatten_parameters(self) -> None:
        self.__dict__["_kept_layouts"] = KeptLayouts()
        super().flatten_parameters()

    def _weights_have_changed(self) -> bool:
        # nn.RNNBase's test, every call, with each weight looked up in
        # _parameters first: Module.__getattr__ costs a decode step (T=1)
        # several microseconds. Parametrized weights are not there: getattr.
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names, strict=True):
            weight = params[name] if name in params else getattr(self, name, None)
            if weight is not None and ref is not None and ref() is not weight:
                return True
        return False

    def extra_repr(self) -> str:
        options = [f", {name}={getattr(self, name)}" for name in _OPTIONS if getattr(self, name)]
        return super().extra_repr() + "".join(options)

    def layout_cache_bytes(self) -> int:
        """Bytes of the weights' layouts the module keeps between inference calls."""
        return self._kept_layouts.nbytes()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_kept_layouts", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__["_kept_layouts"] = KeptLayouts()
        for name in _OPTIONS:
            self.__dict__.setdefault(name, False if name == "layer_norm" else 0.0)

    def forward(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        # nn.LSTM.forward's input handling step for step, so that the same checks
        # run in the same order with the same messages; torch.lstm's call becomes
        # functional.lstm, which checks what torch.lstm would before any work.
        self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            # nn.LSTM checks no more than this for packed input; the rest is
            # functional.lstm's, as it is torch.lstm's there.
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                input = input.unsqueeze(batch_dim)
            batch_sizes = sorted_indices = unsorted_indices = None
            if hx is None:
                # nn.LSTM checks against zeros of its own making: only the input can fail.
                self.check_input(input, batch_sizes)
            else:
                rank = 3 if batched else 2
                if hx[0].dim() != rank or hx[1].dim() != rank:
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {rank}-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                if not batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                self.check_forward_args(input, hx, batch_sizes)

        output, hidden = functional.lstm(
            input,
            hx,
            self._flat_weights,
            bias=self.bias,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            batch_first=self.batch_first,
            dropout=self.dropout,
            training=self.training,
            batch_sizes=batch_sizes,
            kept_layouts=self._kept_layouts,
            weight_drop=self.weight_drop,
            recurrent_dropout=self.recurrent_dropout,
            zoneout_hidden=self.zoneout_hidden,
            zoneout_cell=self.zoneout_cell,
            layer_norm_weights=self.layer_norm_weights() if self.layer_norm else None,
        )
        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        elif not batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, self.permute_hidden(hidden, unsorted_indices)

