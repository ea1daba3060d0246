"""Batching rules (torch.vmap) of the ops.

The recurrence couples the steps of a sequence, never two sequences, so n
independent problems that share the weights are one problem with n times the
batch: the mapped dimension folds into the batch, interleaved (sequence b of
problem k becomes sequence b * n + k, which keeps the packed layout's order by
length), and one call of the op does the work of n. Its results unfold again
as views, the mapped dimension second: (rows, n, ...). The backward op sums the
weight gradients per problem (its `groups`), which gives per-sample gradients
in one pass.

Where the weights themselves are mapped, the problems share nothing and the
rule runs the op once per problem.
"""

from __future__ import annotations

import torch


def _fold(t, dim, n):
    """(rows, ...) mapped over `dim` (None: the same for every problem) to
    (rows * n, ...), row r of problem k at r * n + k."""
    if t is None:
        return None
    t = t.unsqueeze(1).expand(t.shape[0], n, *t.shape[1:]) if dim is None else t.movedim(dim, 1)
    return t.reshape(t.shape[0] * n, *t.shape[2:])


def _unfold(t, n):
    return None if t is None else t.unflatten(0, (-1, n))


def _loop(op, n, in_dims, args):
    """The op once per problem; results stacked along a new first dimension."""
    results = [
        op(*(a if d is None else a.select(d, k) for a, d in zip(args, in_dims))) for k in range(n)
    ]
    outputs = tuple(None if parts[0] is None else torch.stack(parts) for parts in zip(*results))
    return outputs, tuple(None if o is None else 0 for o in outputs)


def _folding_rule(op, batch_sizes_at, per_sequence, weights, run):
    """A batching rule of `op`: refuses a mapped batch_sizes (argument
    `batch_sizes_at`), loops where an argument in `weights` is mapped, and
    otherwise folds the arguments in `per_sequence` (per row or per sequence:
    both fold alike) and scales batch_sizes, then returns run(args, n):
    the results and their mapped dimensions."""

    def rule(info, in_dims, *args):
        if in_dims[batch_sizes_at] is not None:
            raise ValueError(
                "lstm_ext: vmap over batch_sizes is not supported: every problem in a vmap "
                "must have the same packed layout (map over the data, not the batch sizes)"
            )
        n = info.batch_size
        if any(i < len(in_dims) and in_dims[i] is not None for i in weights):
            return _loop(op, n, in_dims, args)
        args = list(args)
        for i in per_sequence:
            if i < len(args):  # an optional argument may be left out
                args[i] = _fold(args[i], in_dims[i], n)
        args[batch_sizes_at] = args[batch_sizes_at] * n
        return run(args, n)

    return rule


def _unfold_all(op):
    def run(args, n):
        outputs = op(*args)
        return tuple(_unfold(t, n) for t in outputs), (1,) * len(outputs)

    return run


def layer_rule(op, rec_scale_at):
    """lstm_layer or lstm_layer_inference(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
    reverse, ..., rec_scale, zoneout_c, zoneout_h), rec_scale (per sequence) at
    `rec_scale_at`, zoneout's (per row; with zoneout_c, the saved cells are two blocks of
    rows, each folded as rows are) after it."""
    per_sequence = (0, 2, 3, rec_scale_at, rec_scale_at + 1, rec_scale_at + 2)
    weights = (*range(4, 9), *range(rec_scale_at + 3, rec_scale_at + 7))  # LayerNorm's last
    return _folding_rule(op, 1, per_sequence, weights, _unfold_all(op))


def backward_rule(op):
    """lstm_layer_backward(dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates,
    cells, reverse, output_mask, groups=1, rec_scale=None, problems=None, zoneout_c=None,
    zoneout_h=None): the weight gradients come per problem."""

    def run(args, n):
        if len(args) > 17 and args[17] is not None:
            raise ValueError("lstm_ext: vmap over lstm_layer_backward with `problems` is not "
                             "supported (vmap numbers the problems itself)")
        groups = args[15] if len(args) > 15 else 1
        args[15:16] = [groups * n]
        dx, dh0, dc0, *per_problem = op(*args)
        # Problem k of an already grouped call's problem g is g * n + k: k goes second.
        per_problem = [None if t is None else t.unflatten(0, (groups, n)) if groups > 1 else t
                       for t in per_problem]
        outputs = (_unfold(dx, n), _unfold(dh0, n), _unfold(dc0, n), *per_problem)
        dims = (1, 1, 1, *((1 if groups > 1 else 0) for _ in per_problem))
        return outputs, tuple(None if o is None else d for o, d in zip(outputs, dims))

    return _folding_rule(op, 4, (0, 1, 2, 3, 5, 6, 10, 11, 12, 16, 18, 19),
                         (7, 8, 9, 20, 21, 22, 23), run)


def jvp_rule(op):
    """lstm_layer_jvp(x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells, reverse, dx,
    dh0, dc0, dw_ih, dw_hh, db, dw_hr, rec_scale=None): weights and their tangents loop."""
    return _folding_rule(op, 1, (0, 2, 3, 7, 8, 9, 11, 12, 13, 18), (4, 5, 6, 14, 15, 16, 17),
                         _unfold_all(op))
