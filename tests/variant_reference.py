"""The LSTM variants' formulas as a plain loop of cells, one sequence and one
step at a time, in float64: the reference lstm_ext.LSTM's options are tested
against (tests/test_module_variants.py). It knows nothing of packing or
batching beyond each sequence's own length, so it shares no code path with
the fused op or with nn.LSTM's."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from module_reference import ModuleCase, ModuleProblem, Run


# LayerNorm's parameters of a layer and direction: cell's `ln` keys, names.
LAYER_NORM_PARAMETERS = {"ih": "ln_ih_weight", "hh": "ln_hh_weight", "c_weight": "ln_c_weight",
                         "c_bias": "ln_c_bias"}


def layer_norm(v, weight, bias=None, eps=1e-5):
    """v normalised over its elements (biased variance), scaled, shifted if
    `bias` is given."""
    mean = v.mean()
    out = (v - mean) / torch.sqrt(((v - mean) ** 2).mean() + eps) * weight
    return out if bias is None else out + bias


def cell(x, h, c, w_ih, w_hh, b, w_hr, s, d_h=0, d_c=0, ln=None):
    """One step of one sequence: (h_t, c_t); s scales h where it enters the
    recurrent product (recurrent dropout), or is 1; d_h and d_c are zoneout's
    weights of the previous h and c (0: none); `ln`, LayerNorm's scales and
    shift (ih, hh, c_weight, c_bias), or None."""
    ih, hh = w_ih @ x, w_hh @ (h * s)
    if ln is not None:
        ih, hh = layer_norm(ih, ln["ih"]), layer_norm(hh, ln["hh"])
    a = ih + hh + b
    i, f, g, o = a.chunk(4)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    c_out = c_new if ln is None else layer_norm(c_new, ln["c_weight"], ln["c_bias"])
    h_new = torch.sigmoid(o) * torch.tanh(c_out)
    h_new = h_new if w_hr is None else w_hr @ h_new
    return d_h * h + (1 - d_h) * h_new, d_c * c + (1 - d_c) * c_new


def reference_lstm(case: ModuleCase, x, lengths, h0, c0, params: dict, w_hh: dict, rec: dict,
                   zoneout: dict | None = None):
    """Output (T, B, D * P) time-major, zero past each length, and h_n, c_n
    (L * D, B, *); x is (T, B, I) time-major. `w_hh` gives each layer and
    direction's recurrent weight by its parameters' suffix ("_l0",
    "_l0_reverse", ...): weight drop's W_hh ⊙ M / (1 - p), or the parameter;
    `rec` its recurrent dropout's m / (1 - p), (B, P), if any; `zoneout` its
    zoneout weights (d_h, d_c), each a number or (T, B, P) and (T, B, H)."""
    zoneout = zoneout or {}

    def at(d, t, s):
        return d[t, s] if isinstance(d, torch.Tensor) else d
    D = 2 if case.bidirectional else 1
    T, B = x.shape[:2]
    h_n, c_n = [], []
    inputs = x
    for layer in range(case.layers):
        per_sequence = [[] for _ in range(B)]  # each direction's (T, P) output
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            b = params["bias_ih" + sfx] + params["bias_hh" + sfx] if case.bias else 0
            w_hr = params.get("weight_hr" + sfx)
            ln = ({key: params[name + sfx] for key, name in LAYER_NORM_PARAMETERS.items()}
                  if "ln_ih_weight" + sfx in params else None)
            hs, cs = [], []
            for s in range(B):
                h, c = h0[layer * D + d, s], c0[layer * D + d, s]
                ys = {}
                steps = range(int(lengths[s]))
                d_h, d_c = zoneout.get(sfx, (0, 0))
                for t in reversed(steps) if d else steps:
                    h, c = cell(inputs[t, s], h, c, params["weight_ih" + sfx], w_hh[sfx], b,
                                w_hr, rec[sfx][s] if sfx in rec else 1, at(d_h, t, s),
                                at(d_c, t, s), ln)
                    ys[t] = h
                hs.append(h)
                cs.append(c)
                per_sequence[s].append(torch.stack(
                    [ys[t] if t in ys else torch.zeros_like(h) for t in range(T)]))
            h_n.append(torch.stack(hs))
            c_n.append(torch.stack(cs))
        inputs = torch.stack([torch.cat(ys, 1) for ys in per_sequence], 1)
    return inputs, torch.stack(h_n), torch.stack(c_n)


def reference_run(problem: ModuleProblem, module, w_hh_masks: dict, p: float,
                  rec: dict | None = None, zoneout: dict | None = None,
                  dtype: torch.dtype = torch.float64) -> Run:
    """ModuleProblem.run's results, loss and gradients from reference_lstm on
    `module`'s parameters (copies), each W_hh times its mask (by suffix;
    none: W_hh itself) over 1 - p; `rec`: recurrent dropout's scales by
    suffix, (B, P) in the input's sequence order; `zoneout`: reference_lstm's,
    masks time-major in the input's sequence order. In `dtype`: float64
    unless told."""
    c = problem.case
    x, h0, c0, _ = problem.inputs(dtype)
    params = {name: t.detach().to(dtype).requires_grad_()
              for name, t in module.named_parameters()}
    w_hh = {name[len("weight_hh"):]: w * w_hh_masks[name[len("weight_hh"):]].to(dtype) / (1 - p)
            if name[len("weight_hh"):] in w_hh_masks else w
            for name, w in params.items() if name.startswith("weight_hh")}
    batched = c.input != "unbatched"
    xs = x if batched else x.unsqueeze(1)
    xs = xs.transpose(0, 1) if c.batch_first and batched else xs
    h0s, c0s = (h0, c0) if c.hx else (torch.zeros_like(h0), torch.zeros_like(c0))
    if not batched:
        h0s, c0s = h0s.unsqueeze(1), c0s.unsqueeze(1)
    lengths = problem.lengths if c.input in ("packed", "sorted") else [xs.shape[0]] * xs.shape[1]
    rec = {k: v.to(dtype) if batched else v.to(dtype).reshape(1, -1)
           for k, v in (rec or {}).items()}
    zoneout = zoneout and {k: tuple(d.to(dtype) if torch.is_tensor(d) else d for d in pair)
                           for k, pair in zoneout.items()}
    y, h_n, c_n = reference_lstm(c, xs, lengths, h0s, c0s, params, w_hh, rec, zoneout)
    if c.input in ("packed", "sorted"):
        output = pack_padded_sequence(y, problem.lengths, enforce_sorted=c.input == "sorted")
        y = output.data
    elif not batched:
        y, h_n, c_n = y.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        output = y
    else:
        output = y = y.transpose(0, 1) if c.batch_first else y
    loss = sum((a * b.to(dtype)).sum() for a, b in ((y, problem.dy), (h_n, problem.dh),
                                                    (c_n, problem.dc)))
    leaves = {"input": x, **({"h0": h0, "c0": c0} if c.hx else {}), **params}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return Run(output, h_n, c_n, {k: g if g is not None else torch.zeros_like(v)
                                  for (k, v), g in zip(leaves.items(), grads)})


def assert_close_to_reference(ours: Run, ref: Run, **tol):
    """Values of y, h_n, c_n and every gradient (packed: both in packed order)."""
    for name in ("y", "h_n", "c_n"):
        torch.testing.assert_close(getattr(ours, name).double(), getattr(ref, name), **tol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert ours.grads.keys() == ref.grads.keys()
    for name, g in ref.grads.items():
        torch.testing.assert_close(ours.grads[name].double(), g, **tol,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


def assert_close_as_a_float32_loop(ours: Run, ref: Run, loop: Run, rtol: float, atol: float):
    """assert_close_to_reference for float32 results where rounding is
    amplified: each tensor may also err by 8 times the worst error of the
    same loop of cells run in float32 (`loop`) on it."""
    def pairs(run):
        return [(n, getattr(run, n)) for n in ("y", "h_n", "c_n")] + list(run.grads.items())
    assert ours.grads.keys() == ref.grads.keys()
    for (name, a), (_, b), (_, c) in zip(pairs(ours), pairs(ref), pairs(loop)):
        slack = 8 * (c.detach().double() - b.detach()).abs().max().item()
        torch.testing.assert_close(a.detach().double(), b.detach(), rtol=rtol, atol=atol + slack,
                                   msg=lambda m, name=name: f"{name}: {m}")


def assert_layers_agree_with_options(layer, other, dtype, zoneout=False):
    """Two implementations of lstm_ext.lstm_layer's signature (CPU and CUDA,
    real or emulated) agree with a recurrent_scale and, with `zoneout`,
    zoneout's weights: outputs, gradients and forward-mode tangents (with
    zoneout, the composite's on both sides), packed input, a projection, both
    directions."""
    gen = torch.Generator().manual_seed(1)
    batch_sizes = torch.tensor([3, 3, 2, 1])
    x = torch.randn(9, 4, generator=gen, dtype=dtype)
    h0 = torch.randn(3, 5, generator=gen, dtype=dtype)
    c0 = torch.randn(3, 6, generator=gen, dtype=dtype)
    w_ih, w_hh = (torch.randn(24, k, generator=gen, dtype=dtype) for k in (4, 5))
    w_hr = torch.randn(5, 6, generator=gen, dtype=dtype)
    scale = torch.randint(0, 2, (3, 5), generator=gen).to(dtype) * 2
    tangents = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in (x, h0, w_hh)]
    options = dict(zoneout_cell=torch.randint(0, 2, (9, 6), generator=gen).to(dtype),
                   zoneout_hidden=torch.randint(0, 2, (9, 5), generator=gen).to(dtype))
    for reverse in (False, True):
        results = []
        for run in (layer, other):
            def fn(x, h0, w_hh, run=run, reverse=reverse):
                y, (h, c) = run(x, (h0, c0), w_ih, w_hh, None, None, w_hr,
                                batch_sizes=batch_sizes, reverse=reverse, recurrent_scale=scale,
                                **(options if zoneout else {}))
                return y, h, c
            leaves = [t.clone().requires_grad_() for t in (x, h0, w_hh)]
            y, h, c = fn(*leaves)
            grads = torch.autograd.grad(y.sin().sum() + h.sum() + c.square().sum(), leaves)
            _, tangent = torch.func.jvp(fn, (x, h0, w_hh), tuple(tangents))
            results.append((y, h, c, *grads, *tangent))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)
