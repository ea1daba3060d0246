"""The backward op's per-problem weight gradients (`groups`) on any packed
layout, checked against a backward of each problem alone: the problem of row
r of a step (sequence r) is r % groups, or problems[r] where `problems` is
given; with groups = B every sequence is its own, as Opacus's per-sample
gradients need."""

import torch

# Lengths 5, 5, 3, 2, 1 (packed, sorted): no groups > 1 but 5 divides every step.
BATCH_SIZES = torch.tensor([5, 4, 3, 2, 2], dtype=torch.int64)


def _problem_rows(batch_sizes, sequences):
    """Rows of `sequences` (ascending) in the packed layout, and their own batch_sizes."""
    rows, sizes, offset = [], [], 0
    for size in batch_sizes.tolist():
        mine = [s for s in sequences if s < size]
        rows += [offset + s for s in mine]
        sizes.append(len(mine))
        offset += size
    sizes = [s for s in sizes if s > 0]
    return torch.tensor(rows), torch.tensor(sizes, dtype=torch.int64)


def assert_groups_match_problems_alone(ops, groups, *, reverse, proj=0, dtype=torch.float64,
                                       tol=1e-12, I=3, H=6, batch_sizes=BATCH_SIZES, seed=0,
                                       problems=None, recurrent_scale=False, zoneout=False):
    """`proj`: the projection's size, 0 for none; `tol`: rtol and atol;
    `problems`: a list, each sequence's problem; `recurrent_scale`: with a
    rec_scale (recurrent dropout's); `zoneout`: with zoneout's weights on c
    and h."""
    gen = torch.Generator().manual_seed(seed)
    bs = batch_sizes
    B, rows, P = int(bs[0]), int(bs.sum()), proj or H

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x, h0, c0 = randn(rows, I), randn(B, P), randn(B, H)
    w_ih, w_hh, b = randn(4 * H, I), randn(4 * H, P), randn(4 * H)
    w_hr = randn(P, H) if proj else None
    s = (torch.rand(B, P, generator=gen) > 0.5).to(dtype) * 2 if recurrent_scale else None
    d_c, d_h = ((torch.rand(rows, n, generator=gen) > 0.5).to(dtype) if zoneout else None
                for n in (H, P))
    y, _, _, gates, cells = ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b, b, w_hr, reverse, s,
                                           d_c, d_h)
    dy, dh_n, dc_n = randn(*y.shape), randn(B, P), randn(B, H)
    grouped = ops.lstm_layer_backward(dy, dh_n, dc_n, x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates,
                                      cells, reverse, [True] * 4, groups, s,
                                      None if problems is None else torch.tensor(problems),
                                      d_c, d_h)
    summed = ops.lstm_layer_backward(dy, dh_n, dc_n, x, bs, h0, c0, w_ih, w_hh, w_hr, y, gates,
                                     cells, reverse, [True] * 4, 1, s, None, d_c, d_h)
    def close(a, b, scale):
        # 16-bit results are rounded one by one: their errors scale with the
        # largest of the terms, not with a sum that cancels.
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, scale.abs().max().item()))

    for g in range(groups):
        seqs = [s for s in range(B) if (s % groups if problems is None else problems[s]) == g]
        if not seqs:
            for a in grouped[3:]:
                if a is not None:
                    assert not a[g].any()
            continue
        r, sizes = _problem_rows(bs, seqs)
        # With zoneout on c, the saved cells are c_t of every row, then c̃'s.
        cells_r = torch.cat([cells[r], cells[r + rows]]) if zoneout else cells[r]
        alone = ops.lstm_layer_backward(dy[r], dh_n[seqs], dc_n[seqs], x[r], sizes, h0[seqs],
                                        c0[seqs], w_ih, w_hh, w_hr, y[r], gates[r], cells_r,
                                        reverse, [True] * 4, 1, None if s is None else s[seqs],
                                        None, None if d_c is None else d_c[r],
                                        None if d_h is None else d_h[r])
        for a, b in zip(grouped[3:], alone[3:]):
            if b is not None:
                close(a[g] if groups > 1 else a, b, b)
    for a, b in zip(grouped, summed):
        if b is not None:
            close(a.sum(0) if a.dim() > b.dim() else a, b, a)
