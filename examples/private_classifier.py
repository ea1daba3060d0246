"""A sequence classifier trained with differential privacy (DP-SGD through
Opacus) on lstm_ext.LSTM: is a line of Python's standard library a comment's
text or code?

    python examples/private_classifier.py
    python examples/private_classifier.py --mode functorch --epochs 2

The lines ship with Python (nothing is downloaded): comments with their '#'
taken off, and code lines, each at most 80 characters, read one character at
a time. Batches hold lines of every length, packed without sorting
(pack_padded_sequence with enforce_sorted=False), and the classifier reads the
LSTM's final hidden state h_n: the pattern whose per-sample gradients Opacus's
own DPLSTM gets wrong. `import lstm_ext.opacus` lets Opacus's PrivacyEngine
take the model as it is; each step clips every sample's gradient, adds
Gaussian noise and reports the privacy spent (epsilon at delta = 1e-5).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import time
import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext
import lstm_ext.opacus  # registers lstm_ext.LSTM with Opacus

MAX_CHARS = 80


def stdlib_lines(count: int, seed: int) -> tuple[list[str], list[int]]:
    """`count` lines, half comments' text (label 1), half code (label 0), of
    at least 8 characters, from the standard library's .py files."""
    comments, code = [], []
    for path in sorted(pathlib.Path(os.__file__).parent.glob("*.py")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            text = line.lstrip("#").strip() if line.startswith("#") else line
            if 8 <= len(text) <= MAX_CHARS and text.isascii():
                (comments if line.startswith("#") else code).append(text)
        if min(len(comments), len(code)) >= count // 2:
            break
    rng = random.Random(seed)
    lines = rng.sample(comments, count // 2) + rng.sample(code, count // 2)
    labels = [1] * (count // 2) + [0] * (count // 2)
    order = list(range(count))
    rng.shuffle(order)
    return [lines[i] for i in order], [labels[i] for i in order]


def encode(lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (N, MAX_CHARS) character codes (printable ASCII from 1, 0 for
    padding) and the lengths."""
    codes = torch.zeros(len(lines), MAX_CHARS, dtype=torch.long)
    for i, line in enumerate(lines):
        codes[i, : len(line)] = torch.tensor([max(ord(ch) - 31, 1) for ch in line])
    return codes, torch.tensor([len(line) for line in lines])


class LineClassifier(nn.Module):
    def __init__(self, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(97, embed)
        self.lstm = lstm_ext.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, codes, lengths):
        embedded = self.embed(codes)
        # An empty batch (Poisson sampling draws them) cannot be packed.
        packed = embedded if len(codes) == 0 else pack_padded_sequence(
            embedded, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.head(h_n[-1])


@torch.no_grad()
def accuracy(model, codes, lengths, labels) -> float:
    model.eval()
    correct = (model(codes, lengths).argmax(1) == labels).float().mean().item()
    model.train()
    return correct


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=8000,
                   help="training lines (and a quarter as many to test on)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64, help="expected batch size (Poisson sampling)")
    p.add_argument("--embed", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.8, help="noise multiplier")
    p.add_argument("--clip", type=float, default=1.0, help="per-sample gradient norm bound")
    p.add_argument("--mode", choices=["hooks", "functorch"], default="hooks",
                   help="Opacus's grad_sample_mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    lines, labels = stdlib_lines(args.lines + args.lines // 4, args.seed)
    codes, lengths = encode(lines)
    labels = torch.tensor(labels)
    train, test = slice(0, args.lines), slice(args.lines, None)
    data = torch.utils.data.TensorDataset(codes[train], lengths[train], labels[train])
    print(f"{args.lines} training and {len(lines) - args.lines} test lines of stdlib source")

    model = LineClassifier(args.embed, args.hidden, args.layers)
    # Opacus's notes: secure_mode's advice for production runs; its hooks on
    # the embedding fire early (the character codes need no gradient); its
    # functorch mode tries autocast to the codes' integer dtype.
    for note in ("Secure RNG turned off", "Full backward hook is firing",
                 "In CPU autocast, but the target dtype is not supported"):
        warnings.filterwarnings("ignore", message=note)
    engine = PrivacyEngine()
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
        data_loader=torch.utils.data.DataLoader(data, batch_size=args.batch),
        noise_multiplier=args.noise, max_grad_norm=args.clip, grad_sample_mode=args.mode)
    history = []
    for epoch in range(args.epochs):
        start, losses = time.perf_counter(), []
        for batch_codes, batch_lengths, batch_labels in loader:
            optimizer.zero_grad()
            logits = model(batch_codes, batch_lengths)
            # An empty batch still takes its (noise-only) step: the accountant
            # counts every step.
            loss = (nn.functional.cross_entropy(logits, batch_labels) if len(batch_labels)
                    else logits.sum())
            loss.backward()
            optimizer.step()
            if len(batch_labels):
                losses.append(loss.item())
        seconds = time.perf_counter() - start
        history.append({
            "epoch": epoch + 1, "loss": sum(losses) / len(losses),
            "test_accuracy": accuracy(model, codes[test], lengths[test], labels[test]),
            "epsilon": engine.get_epsilon(delta=1e-5), "seconds": seconds,
            "ms_per_step": seconds / len(losses) * 1e3})
        h = history[-1]
        print(f"epoch {h['epoch']}: loss {h['loss']:.3f}, test accuracy {h['test_accuracy']:.3f}, "
              f"epsilon {h['epsilon']:.2f} (delta 1e-5), {h['ms_per_step']:.1f} ms/step")
    return {"history": history}


if __name__ == "__main__":
    main()
