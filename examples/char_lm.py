"""A character-level language model on Python's own standard library source,
trained with torch.nn.LSTM and with lstm_ext.LSTM from the same seed.

    python examples/char_lm.py                  # both, compared; writes char_lm.png
    python examples/char_lm.py --impl lstm_ext  # one of them

The text ships with Python (nothing is downloaded). With --impl both, the two
runs start from the same weights and see the same batches; the script prints
their time per step, the speedup, and how far apart their loss curves are,
and plots both curves. Then each model samples text one character at a time,
the state carried from step to step (a decode step: T=1, no gradient), and
the script prints the characters per second.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch
from torch import nn
from tqdm import tqdm

import lstm_ext

IMPLS = {"torch": nn.LSTM, "lstm_ext": lstm_ext.LSTM}


def stdlib_text(chars: int) -> str:
    """The first `chars` characters of the standard library's .py files, in a fixed order."""
    root = pathlib.Path(os.__file__).parent
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    return "".join(parts)[:chars]


class CharLM(nn.Module):
    def __init__(self, lstm_cls, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = lstm_cls(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


def batches(data: torch.Tensor, batch: int, seq: int, steps: int, seed: int):
    """`steps` random (input, target) windows of `seq` characters, `batch` at a time."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        window = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def train(impl: str, data: torch.Tensor, alphabet: list[str], args) -> dict:
    vocab = len(alphabet)
    torch.manual_seed(args.seed)
    model = CharLM(IMPLS[impl], vocab, args.embed, args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses, seconds = [], 0.0
    progress = tqdm(batches(data, args.batch, args.seq, args.steps, args.seed),
                    total=args.steps, desc=f"{impl:>8}", unit="step", disable=args.quiet)
    for inputs, targets in progress:
        start = time.perf_counter()
        logits, _ = model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - start
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    text, per_second = sample(model, alphabet, "def ", args.sample, args.seed)
    return {"impl": impl, "losses": losses, "seconds_per_step": seconds / args.steps,
            "sample": text, "chars_per_second": per_second}


@torch.no_grad()
def sample(model: CharLM, alphabet: list[str], prompt: str, chars: int, seed: int):
    """`chars` characters after `prompt`, drawn one at a time from the model's
    distribution (the same draws for the same probabilities); and how many
    characters per second that took."""
    model.eval()
    index = {ch: i for i, ch in enumerate(alphabet)}
    gen = torch.Generator().manual_seed(seed)
    logits, state = model(torch.tensor([[index[ch] for ch in prompt]]))
    drawn = []
    start = time.perf_counter()
    for _ in range(chars):
        token = torch.multinomial(logits[:, -1].softmax(-1), 1, generator=gen)
        drawn.append(alphabet[token.item()])
        logits, state = model(token, state)
    seconds = time.perf_counter() - start
    model.train()
    return "".join(drawn), chars / seconds


def plot(runs: list[dict], path: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, style in zip(runs, ["-", "--"]):
        ms = run["seconds_per_step"] * 1e3
        ax.plot(run["losses"], style, label=f"{run['impl']} ({ms:.1f} ms/step)")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title("Character LM on the Python standard library")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=["torch", "lstm_ext", "both"], default="both")
    p.add_argument("--chars", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=100)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample", type=int, default=500,
                   help="characters to sample after training, one step at a time")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("char_lm"),
                   help="writes OUT.png (loss plot) and OUT.json (curves, timings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    text = stdlib_text(args.chars)
    alphabet = sorted(set(text))
    index = {ch: i for i, ch in enumerate(alphabet)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    print(f"{len(text):,} characters of stdlib source, {len(alphabet)} distinct")

    impls = ["torch", "lstm_ext"] if args.impl == "both" else [args.impl]
    runs = [train(impl, data, alphabet, args) for impl in impls]
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    for run in runs:
        print(f"{run['impl']:>8}: final loss {run['losses'][-1]:.4f}, "
              f"{run['seconds_per_step'] * 1e3:.1f} ms/step; sampled "
              f"{run['chars_per_second']:,.0f} characters/s: def {run['sample'][:60]!r}...")
    if len(runs) == 2:
        gap = max(abs(a - b) for a, b in zip(runs[0]["losses"], runs[1]["losses"]))
        speedup = runs[0]["seconds_per_step"] / runs[1]["seconds_per_step"]
        summary.update(max_loss_gap=gap, speedup=speedup)
        print(f"speedup of lstm_ext over torch: {speedup:.2f}x; "
              f"largest gap between the loss curves: {gap:.2e}")
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    plot(runs, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.json')}")
    return summary


if __name__ == "__main__":
    main()
