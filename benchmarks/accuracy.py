"""bfloat16/float16 accuracy: the largest error against float64, relative to
the largest value, of lstm_ext (native and upcast paths) and of nn.LSTM's own
run in that dtype, on the same rounded weights and inputs, per output, final
state and gradient kind; prints a markdown table.

    python benchmarks/accuracy.py                  # long sequences, bfloat16
    python benchmarks/accuracy.py --odd --dtype float16   # small odd shapes

--odd takes `python -m lstm_ext.check`'s shapes (odd row counts and input
sizes, I=1, B=1, packed, two bidirectional layers with an odd proj_size),
whose errors are a few roundings each: each figure is the mean over the
inputs of --seeds seeds.
"""

import argparse
import copy
import itertools

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext
from lstm_ext.check import CASES as ODD, Case, relative_errors

LONG = [Case(f"{layers}L{' bi' * bidirectional}{f' P{proj}' * bool(proj)}"
             f"{' packed' * packed} T={T} B={B}", I=32, H=64, T=T, B=B, layers=layers,
             bidirectional=bidirectional, proj=proj, lengths=() if packed else None)
        for (layers, bidirectional, proj, packed), (T, B) in itertools.product(
            [(1, False, 0, False), (2, True, 0, False), (1, False, 16, False),
             (2, False, 0, True), (1, True, 16, True)], [(50, 16), (500, 4)])]
KINDS = ("y", "h_n", "c_n", "grad input", "grad weights")


def run(module, case, dtype, seed, round_to):
    """Outputs and gradients of `module` on the inputs of `seed` (values of
    round_to); lengths () are random (unsorted), one of them T."""
    gen = torch.Generator().manual_seed(seed)
    D, P = 2 if case.bidirectional else 1, case.proj or case.H

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(round_to).to(dtype)

    x = randn(case.T, case.B, case.I).requires_grad_()
    h0, c0 = randn(case.layers * D, case.B, P), randn(case.layers * D, case.B, case.H)
    inp = x
    if case.lengths is not None:
        lengths = torch.tensor(case.lengths) if case.lengths else torch.randint(
            1, case.T + 1, (case.B,), generator=gen)
        if not case.lengths:
            lengths[0] = case.T
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h_n, c_n) = module(inp, (h0, c0))
    y = out.data if isinstance(out, PackedSequence) else out
    loss = sum((t * randn(*t.shape)).sum() for t in (y, h_n, c_n))
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return {"y": y, "h_n": h_n, "c_n": c_n, "grad input": [grads[0]], "grad weights": grads[1:]}


def errors(result, exact):
    """Per kind, the largest relative error of its tensors (lstm_ext.check's)."""
    def named(r):
        return {(kind, i): t for kind in KINDS
                for i, t in enumerate(r[kind] if isinstance(r[kind], (list, tuple)) else [r[kind]])}

    each = relative_errors(named(result), named(exact))
    return {kind: max(e for (k, _), e in each.items() if k == kind) for kind in KINDS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--odd", action="store_true", help="lstm_ext.check's small odd shapes")
    parser.add_argument("--seeds", type=int, default=8, help="inputs per shape with --odd")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cases, seeds = (ODD, args.seeds) if args.odd else (LONG, 1)
    worst = {path: dict.fromkeys(KINDS, 0.0) for path in ("native", "upcast")}
    rows = []
    for case in cases:
        torch.manual_seed(0)
        kwargs = dict(input_size=case.I, hidden_size=case.H, num_layers=case.layers,
                      bidirectional=case.bidirectional, proj_size=case.proj)
        ref = torch.nn.LSTM(**kwargs).to(dtype)
        ours = lstm_ext.LSTM(**kwargs).to(dtype)
        ours.load_state_dict(ref.state_dict())
        total = {name: dict.fromkeys(KINDS, 0.0) for name in ("nn.LSTM", *worst)}
        for seed in range(seeds):
            exact = run(copy.deepcopy(ref).double(), case, torch.float64, seed, dtype)
            for name in total:
                if name == "native" and not lstm_ext.cpu_native(dtype):
                    continue
                previous = torch.ops.lstm_ext._cpu_native_off(name == "upcast")
                module = ref if name == "nn.LSTM" else ours
                for kind, e in errors(run(module, case, dtype, seed, dtype), exact).items():
                    total[name][kind] += e / seeds
                torch.ops.lstm_ext._cpu_native_off(previous)
        theirs = total["nn.LSTM"]
        for path in worst:
            if path == "native" and not lstm_ext.cpu_native(dtype):
                continue
            mine = total[path]
            for kind in KINDS:
                worst[path][kind] = max(worst[path][kind], mine[kind] / theirs[kind])
            rows.append((case, path, mine, theirs))
    print(f"{args.dtype}, {'mean of ' + str(seeds) + ' inputs' if seeds > 1 else 'one input'}"
          " per shape\n")
    print("| case | path | " + " | ".join(f"{k}: ours / nn.LSTM" for k in KINDS) + " |")
    print("|---|---|" + "---:|" * len(KINDS))
    for case, path, mine, theirs in rows:
        shape = f"{case.name} (I={case.I} H={case.H})"
        cells = " | ".join(f"{mine[k]:.1e} / {theirs[k]:.1e}" for k in KINDS)
        print(f"| {shape} | {path} | {cells} |")
    print()
    for path, ratios in worst.items():
        if not any(row[1] == path for row in rows):
            continue
        print(f"{path}: largest ratio of our error to nn.LSTM's per kind: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
