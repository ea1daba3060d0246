"""The autograd modes beyond forward+backward: lstm_ext against nn.LSTM, in one process.

Forward-mode AD (torch.func.jvp), per-sample gradients (vmap(grad)), Jacobians
(jacrev) and Hessian-vector products (double backward), timed with
torch.utils.benchmark, taking turns as bench.py does; the ratio is the
other's time over ours (> 1: we are faster), the median of the turns' ratios.
nn.LSTM has no per-sample gradients (its row is a loop of one backward pass
per sample, what people run instead) and, in float32 on the CPU, no
forward-mode AD (its row is the double-vjp trick). Writes
benchmarks/results/autograd_modes.{md,json}.

    python benchmarks/autograd_modes.py [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys

import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import measure  # noqa: E402
from bench import ROUNDS, cpu_name  # noqa: E402
from configs import Config  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _jvp_input(model, x):
    v = torch.randn_like(x)
    return lambda: jvp(lambda x: model(x)[0], (x,), (v,))


def _jvp_input_double_vjp(model, x):
    """The tangent by reverse mode twice: nn.LSTM's route in float32 on the CPU,
    where its oneDNN layer has no forward-mode derivative."""
    v = torch.randn_like(x)
    return lambda: torch.autograd.functional.jvp(lambda x: model(x)[0], x, v)


def _jvp_input_no_grad(model, x):
    run = _jvp_input(model, x)

    def no_grad():
        with torch.no_grad():
            run()

    return no_grad


def _per_sample_vmap(model, x):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(params, sample):
        out, _ = functional_call(model, params, (sample.unsqueeze(1),))
        return out.square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 1))
    return lambda: per_sample(params, x)


def _per_sample_loop(model, x):
    params = list(model.parameters())

    def run():
        for b in range(x.shape[1]):
            out, _ = model(x[:, b : b + 1])
            torch.autograd.grad(out.square().sum(), params)

    return run


def _jacrev_input(model, x):
    return lambda: jacrev(lambda x: model(x)[0])(x)


def _hvp_weights(model, x):
    params = list(model.parameters())
    vectors = [torch.randn_like(p) for p in params]

    def run():
        out, _ = model(x)
        grads = torch.autograd.grad(out.tanh().sum(), params, create_graph=True)
        torch.autograd.grad(grads, params, vectors)

    return run


# (mode, config, dtype, ours, the other's counterpart: nn.LSTM's, or None for
# a loop of our own per-sample backward passes)
ROWS = [
    ("jvp w.r.t. input (nn.LSTM: double vjp)", Config(32, 100, 256, 256), torch.float32,
     _jvp_input, _jvp_input_double_vjp),
    ("jvp w.r.t. input, under no_grad (nn.LSTM: double vjp)", Config(32, 100, 256, 256),
     torch.float32, _jvp_input_no_grad, _jvp_input_double_vjp),
    ("jvp w.r.t. input (nn.LSTM: double vjp)", Config(1, 100, 64, 64), torch.float32,
     _jvp_input, _jvp_input_double_vjp),
    ("jvp w.r.t. input, float64 (both torch.func.jvp)", Config(32, 100, 256, 256),
     torch.float64, _jvp_input, _jvp_input),
    ("per-sample gradients (nn.LSTM: a loop of backward passes)", Config(32, 50, 128, 128),
     torch.float32, _per_sample_vmap, _per_sample_loop),
    ("per-sample gradients, against our own loop", Config(32, 50, 128, 128), torch.float32,
     _per_sample_vmap, None),
    ("jacrev w.r.t. input", Config(4, 20, 32, 32), torch.float32, _jacrev_input, _jacrev_input),
    ("Hessian-vector product (double backward)", Config(8, 50, 64, 64), torch.float32,
     _hvp_weights, _hvp_weights),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    for mode, config, dtype, ours_fn, theirs_fn in ROWS:
        models = measure.models(config, dtype, "cpu")
        x = measure.inputs(config, dtype, "cpu")[0].detach()
        ours = ours_fn(models["lstm_ext"], x)
        if theirs_fn is None:
            theirs, other = _per_sample_loop(models["lstm_ext"], x), "lstm_ext loop"
        else:
            theirs, other = theirs_fn(models["nn.LSTM"], x), "nn.LSTM"
        fns = {"lstm_ext": ours, other: theirs}
        for fn in fns.values():
            fn()
        _, per_round = measure.interleaved(fns, args.min_run_time, ROUNDS, mode, config.name)
        ms = {name: statistics.median(t) * 1e3 for name, t in per_round.items()}
        ratio = statistics.median(a / b for a, b in zip(per_round[other], per_round["lstm_ext"]))
        results.append(dict(mode=mode, config=config.name, dtype=str(dtype), other=other, ms=ms,
                            ratio=ratio))
        print(f"{mode}, {config.name}: lstm_ext {ms['lstm_ext']:.2f} ms, {other} "
              f"{ms[other]:.2f} ms, {results[-1]['ratio']:.2f}x")

    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
                threads=args.threads, cpu=cpu_name(), command="python benchmarks/autograd_modes.py")
    lines = ["| mode | config | lstm_ext ms | other | other ms | ratio |",
             "|---|---|---:|---|---:|---:|"]
    lines += [f"| {r['mode']} | {r['config']} | {r['ms']['lstm_ext']:.2f} | {r['other']} "
              f"| {r['ms'][r['other']]:.2f} | **{r['ratio']:.2f}x** |" for r in results]
    header = f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, {meta['date']}"
    table = "\n".join(lines)
    print(f"\n{header}\n\n{table}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "autograd_modes.md").write_text(f"{header}\n\n{table}\n")
    (RESULTS / "autograd_modes.json").write_text(json.dumps(dict(meta=meta, rows=results),
                                                            indent=2))


if __name__ == "__main__":
    main()
