"""A private (DP-SGD) training step of a small sequence classifier with
lstm_ext.LSTM under Opacus (`import lstm_ext.opacus`), against the same step
with Opacus's own DPLSTM, in one process.

The classifier: the LSTM, then a linear layer on the last layer's h_n. A step
is what Opacus runs: forward, a mean cross-entropy's backward with per-sample
gradients, and DPOptimizer's step (per-sample clipping, Gaussian noise, SGD
update). Both models start from the same weights; each is made private by its
own PrivacyEngine (noise 1.0, clipping at 1.0, no Poisson sampling, so the
batch is fixed). Timed with torch.utils.benchmark, the models in turn for five
rounds; the table gives medians and DPLSTM's time over lstm_ext's (the
issue's target: at least 5x), and a non-private lstm_ext step for the cost of
privacy itself.

Padded rows run every sequence over all T steps. Packed rows have lengths
from T/2 to T in no order (pack_padded_sequence with enforce_sorted=False),
where DPLSTM's per-sample gradients are wrong (the first line printed
measures both against one-sample backward passes): its time is given all the
same.

    python benchmarks/private.py
    python benchmarks/private.py --threads 1 --config "B=64,T=100,I=64,H=256"
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import warnings

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.layers import DPLSTM
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench  # noqa: E402
import configs  # noqa: E402
import measure  # noqa: E402

import lstm_ext  # noqa: E402
import lstm_ext.opacus  # noqa: E402

GRID = [configs.Config(32, 50, 64, 128, batch_first=True),
        configs.Config(32, 50, 64, 128, batch_first=True, packed=True)]
ROUNDS = 5


class Classifier(nn.Module):
    def __init__(self, lstm: nn.Module, hidden: int):
        super().__init__()
        self.lstm, self.fc = lstm, nn.Linear(hidden, 2)

    def forward(self, x):
        _, (h_n, _) = self.lstm(x)
        return self.fc(h_n[-1])


def classifiers(config: configs.Config) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    kwargs = {"num_layers": config.layers, "batch_first": config.batch_first}
    made = {"lstm_ext, not private": lstm_ext.LSTM(config.I, config.H, **kwargs),
            "lstm_ext": lstm_ext.LSTM(config.I, config.H, **kwargs),
            "DPLSTM": DPLSTM(config.I, config.H, **kwargs)}
    fc = nn.Linear(config.H, 2)
    for lstm in made.values():
        lstm.load_state_dict(made["lstm_ext"].state_dict())
    made = {name: Classifier(lstm, config.H) for name, lstm in made.items()}
    for model in made.values():
        model.fc.load_state_dict(fc.state_dict())
    return made


def step_fn(model: nn.Module, x, targets, private: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if private:
        data = torch.utils.data.TensorDataset(targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure_mode's advice
            model, optimizer, _ = PrivacyEngine().make_private(
                module=model, optimizer=optimizer,
                data_loader=torch.utils.data.DataLoader(data, batch_size=len(targets)),
                noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    model.train()

    def run():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), targets).backward()
        optimizer.step()
    return run


def per_sample_error(lstm_cls, lengths: torch.Tensor) -> float:
    """The worst relative error (per parameter, in norm) of a classifier's
    per-sample gradients under Opacus's hooks against a backward pass of each
    sample alone, its batch packed with enforce_sorted=False; float32."""
    torch.manual_seed(0)
    B, T, I, H = len(lengths), int(lengths.max()), 4, 6
    model = Classifier(lstm_cls(I, H, batch_first=True), H)
    x, targets = torch.randn(B, T, I), torch.randint(0, 2, (B,))

    def packed(b):
        return pack_padded_sequence(x[b], lengths[b], batch_first=True, enforce_sorted=False)

    alone = [torch.autograd.grad(nn.functional.cross_entropy(model(packed([b])), targets[[b]]),
                                 list(model.parameters())) for b in range(B)]
    wrapped = GradSampleModule(model)
    nn.functional.cross_entropy(wrapped(packed(list(range(B)))), targets).backward()
    errors = [((p.grad_sample - torch.stack(e)).norm() / torch.stack(e).norm()).item()
              for p, e in zip(model.parameters(), zip(*alone))]
    wrapped._close()
    return max(errors)


def main() -> None:
    args = bench.comparison_parser(__doc__).parse_args()
    bench.begin(args)
    lengths = torch.tensor([3, 12, 1, 7, 12, 5, 9, 2])
    print("Per-sample gradients against one-sample backward passes (B=8, lengths up to 12 "
          "packed unsorted, classifier on h_n), worst relative error: lstm_ext "
          f"{per_sample_error(lstm_ext.LSTM, lengths):.1e}, DPLSTM "
          f"{per_sample_error(DPLSTM, lengths):.1e}\n")
    print("| config | lstm_ext, not private ms | lstm_ext private ms | DPLSTM private ms "
          "| DPLSTM / lstm_ext |\n|---|---:|---:|---:|---:|")
    for config in args.config or GRID:
        x, _, _ = measure.inputs(config, torch.float32, "cpu")
        x = (x.detach() if not isinstance(x, PackedSequence)
             else x._replace(data=x.data.detach()))
        targets = torch.randint(0, 2, (config.B,), generator=torch.Generator().manual_seed(0))
        fns = {name: step_fn(model, x, targets, private=name != "lstm_ext, not private")
               for name, model in classifiers(config).items()}
        for fn in fns.values():
            fn()
        _, per_round = measure.interleaved(fns, args.min_run_time, ROUNDS, "private",
                                           config.name)
        ms = {name: statistics.median(times) * 1e3 for name, times in per_round.items()}
        ratio = statistics.median(a / b for a, b in zip(per_round["DPLSTM"],
                                                        per_round["lstm_ext"]))
        print(f"| {config.name} | {ms['lstm_ext, not private']:.1f} | {ms['lstm_ext']:.1f} "
              f"| {ms['DPLSTM']:.1f} | {ratio:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
