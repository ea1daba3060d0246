"""bfloat16 accuracy: the largest error against float64 of lstm_ext (native and
upcast paths) and of nn.LSTM's own bfloat16 run, on the same rounded weights
and inputs, per output, final state and gradient kind; prints a markdown table.

    python benchmarks/accuracy.py
"""

import copy
import itertools

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext

CASES = [dict(layers=layers, bidirectional=bidirectional, proj=proj, packed=packed, T=T, B=B)
         for (layers, bidirectional, proj, packed), (T, B) in itertools.product(
             [(1, False, 0, False), (2, True, 0, False), (1, False, 16, False),
              (2, False, 0, True), (1, True, 16, True)], [(50, 16), (500, 4)])]
KINDS = ("y", "h_n", "c_n", "grad input", "grad weights")


def run(module, case, dtype, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    D, P = 2 if case["bidirectional"] else 1, case["proj"] or 64

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(torch.bfloat16).to(dtype)

    x = randn(case["T"], case["B"], 32).requires_grad_()
    h0, c0 = randn(case["layers"] * D, case["B"], P), randn(case["layers"] * D, case["B"], 64)
    lengths = torch.randint(1, case["T"] + 1, (case["B"],), generator=gen)
    lengths[0] = case["T"]
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if case["packed"] else x
    out, (h_n, c_n) = module(inp, (h0, c0))
    y = out.data if isinstance(out, PackedSequence) else out
    loss = sum((t * randn(*t.shape)).sum() for t in (y, h_n, c_n))
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return {"y": y, "h_n": h_n, "c_n": c_n, "grad input": [grads[0]], "grad weights": grads[1:]}


def errors(result, exact):
    out = {}
    for kind in KINDS:
        a, b = result[kind], exact[kind]
        pairs = zip(a, b) if isinstance(a, (list, tuple)) else [(a, b)]
        out[kind] = max(((u.double() - v).abs().max() / v.abs().max()).item() for u, v in pairs)
    return out


def main():
    torch.manual_seed(0)
    worst = {path: dict.fromkeys(KINDS, 0.0) for path in ("native", "upcast")}
    rows = []
    for case in CASES:
        kwargs = dict(input_size=32, hidden_size=64, num_layers=case["layers"],
                      bidirectional=case["bidirectional"], proj_size=case["proj"])
        ref = torch.nn.LSTM(**kwargs).bfloat16()
        exact = run(copy.deepcopy(ref).double(), case, torch.float64)
        theirs = errors(run(ref, case, torch.bfloat16), exact)
        ours = lstm_ext.LSTM(**kwargs).bfloat16()
        ours.load_state_dict(ref.state_dict())
        for path in worst:
            if path == "native" and not lstm_ext.cpu_native(torch.bfloat16):
                continue
            previous = torch.ops.lstm_ext._cpu_native_off(path == "upcast")
            mine = errors(run(ours, case, torch.bfloat16), exact)
            torch.ops.lstm_ext._cpu_native_off(previous)
            for kind in KINDS:
                worst[path][kind] = max(worst[path][kind], mine[kind] / theirs[kind])
            rows.append((case, path, mine, theirs))
    print("| case | path | " + " | ".join(f"{k}: ours / nn.LSTM" for k in KINDS) + " |")
    print("|---|---|" + "---:|" * len(KINDS))
    for case, path, mine, theirs in rows:
        name = " ".join(f"{k}={v}" for k, v in case.items())
        cells = " | ".join(f"{mine[k]:.1e} / {theirs[k]:.1e}" for k in KINDS)
        print(f"| {name} | {path} | {cells} |")
    print()
    for path, ratios in worst.items():
        print(f"{path}: largest ratio of our error to nn.LSTM's per kind: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
