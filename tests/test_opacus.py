"""lstm_ext.opacus: Opacus's per-sample gradients of lstm_ext.LSTM from the
fused backward, in Opacus's hooks and functorch modes, against a backward pass
of each sample alone; clipping, accounting and validation through Opacus's
own PrivacyEngine; the modes it refuses."""

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

pytest.importorskip("opacus")

from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample import get_gsm_class
from opacus.validators import ModuleValidator

import lstm_ext
import lstm_ext.opacus  # registers lstm_ext.LSTM with Opacus

I, H, T, B = 3, 5, 6, 4
LENGTHS = torch.tensor([3, 6, 1, 4])  # unsorted: the case Opacus's DPLSTM gets wrong


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    bias: bool = True
    input: str = "packed"  # packed (unsorted lengths), sorted, padded, batch_first
    reads: tuple = ("h_n",)  # of output, h_n, c_n
    hx: bool = False
    calls: int = 1  # the LSTM applied this many times in one forward
    layer_norm: bool = False

    def __str__(self):
        fields = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if getattr(self, f.name) != f.default]
        return ",".join(fields) or "default"


CONFIGS = [
    Config(),
    Config(reads=("output",)),
    Config(reads=("c_n",)),
    Config(reads=("output", "h_n", "c_n"), layers=2, bidirectional=True, proj=2),
    Config(input="sorted", reads=("output", "c_n"), bidirectional=True),
    Config(input="padded", reads=("output", "h_n")),
    Config(input="batch_first", reads=("output", "c_n"), layers=2, proj=3, bias=False),
    Config(hx=True, reads=("h_n", "c_n"), layers=2, bidirectional=True),
    Config(input="padded", hx=True, proj=2),
    Config(calls=2, reads=("output", "h_n"), bidirectional=True),
    Config(layer_norm=True, reads=("output", "h_n", "c_n"), layers=2, bidirectional=True,
           proj=2),
]


class Classifier(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.lstm = lstm_ext.LSTM(I, H, num_layers=cfg.layers, bidirectional=cfg.bidirectional,
                                  proj_size=cfg.proj, bias=cfg.bias,
                                  batch_first=cfg.input == "batch_first",
                                  layer_norm=cfg.layer_norm)
        directions, out = 2 if cfg.bidirectional else 1, cfg.proj or H
        width = {"output": directions * out, "h_n": cfg.layers * directions * out,
                 "c_n": cfg.layers * directions * H}
        self.fc = nn.Linear(sum(width[r] for r in cfg.reads), 2)

    def forward(self, x, lengths, h0=None, c0=None):
        """x: (B, T, I) padded; lengths; h0, c0: (layers * directions, B, *)."""
        cfg = self.cfg
        hx = (h0, c0) if cfg.hx else None
        features = 0
        for _ in range(cfg.calls):
            if cfg.input in ("packed", "sorted"):
                data = pack_padded_sequence(x, lengths, batch_first=True,
                                            enforce_sorted=cfg.input == "sorted")
            else:
                data = x if cfg.input == "batch_first" else x.transpose(0, 1)
            output, (h_n, c_n) = self.lstm(data, hx)
            if cfg.input in ("packed", "sorted"):
                output = pad_packed_sequence(output, batch_first=True)[0]
            elif cfg.input == "padded":
                output = output.transpose(0, 1)
            read = {"output": output.tanh().sum(1), "h_n": h_n.transpose(0, 1).flatten(1),
                    "c_n": c_n.transpose(0, 1).flatten(1)}
            features = features + torch.cat([read[r] for r in cfg.reads], 1)
        return self.fc(features)


def inputs(cfg, dtype):
    torch.manual_seed(1)
    lengths = LENGTHS.sort(descending=True)[0] if cfg.input == "sorted" else LENGTHS
    x = torch.randn(B, T, I, dtype=dtype)
    groups = cfg.layers * (2 if cfg.bidirectional else 1)
    h0 = torch.randn(groups, B, cfg.proj or H, dtype=dtype)
    c0 = torch.randn(groups, B, H, dtype=dtype)
    targets = torch.tensor([0, 1, 1, 0])
    return x, lengths, h0, c0, targets


def per_sample_by_one_sample_passes(model, x, lengths, h0, c0, targets):
    grads = []
    for b in range(B):
        loss = nn.functional.cross_entropy(
            model(x[b:b + 1], lengths[b:b + 1], h0[:, b:b + 1], c0[:, b:b + 1]),
            targets[b:b + 1])
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    return [torch.stack(g) for g in zip(*grads)]


def model_for(cfg, dtype):
    torch.manual_seed(0)
    return Classifier(cfg).to(dtype)


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_per_sample_gradients_equal_one_sample_passes(cfg, mode, dtype):
    model = model_for(cfg, dtype)
    x, lengths, h0, c0, targets = inputs(cfg, dtype)
    expected = per_sample_by_one_sample_passes(model, x, lengths, h0, c0, targets)
    wrapped = GradSampleModule(model, force_functorch=mode == "functorch")
    loss = nn.functional.cross_entropy(wrapped(x, lengths, h0, c0), targets)
    loss.backward()
    tol = ({"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64
           else {"rtol": 1e-5, "atol": 1e-6})
    for (name, p), e in zip(model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad_sample, e, **tol, msg=lambda m, n=name: f"{n}: {m}")
        # autograd's own gradient is still the batch's (the per-sample ones' mean)
        torch.testing.assert_close(p.grad, e.mean(0), **tol, msg=lambda m, n=name: f"{n}: {m}")
    wrapped._close()


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_sum_reduction_and_accumulation_over_batches(mode):
    """loss_reduction='sum' takes the gradients as they are; a second batch
    before the optimizer step makes grad_sample a list, as Opacus's own do."""
    cfg = Config(reads=("output", "h_n"), bidirectional=True)
    model = model_for(cfg, torch.float64)
    x, lengths, h0, c0, targets = inputs(cfg, torch.float64)
    expected = per_sample_by_one_sample_passes(model, x, lengths, h0, c0, targets)
    wrapped = GradSampleModule(model, loss_reduction="sum", force_functorch=mode == "functorch")
    for _ in range(2):
        nn.functional.cross_entropy(wrapped(x, lengths), targets, reduction="sum").backward()
    for p, e in zip(model.lstm.parameters(), expected[: len(list(model.lstm.parameters()))]):
        assert isinstance(p.grad_sample, list) and len(p.grad_sample) == 2
        for g in p.grad_sample:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    wrapped._close()


def test_disabled_hooks_eval_and_no_grad_leave_no_per_sample_gradients():
    model = model_for(Config(), torch.float64)
    x, lengths, *_, targets = inputs(Config(), torch.float64)
    wrapped = GradSampleModule(model)
    wrapped.disable_hooks()
    nn.functional.cross_entropy(wrapped(x, lengths), targets).backward()
    assert model.lstm.weight_ih_l0.grad_sample is None
    assert model.lstm.weight_ih_l0._forward_counter == 0
    wrapped.enable_hooks()
    with torch.no_grad():
        wrapped(x, lengths)
    wrapped.eval()
    wrapped(x, lengths)
    assert model.lstm.weight_ih_l0._forward_counter == 0
    wrapped._close()
    assert not model.lstm._forward_pre_hooks and not model.lstm._forward_hooks


def test_clipping_and_accounting_through_make_private():
    """One DP-SGD step without noise equals the mean of the one-sample
    gradients clipped to max_grad_norm (the clipping binds); and Opacus's
    validator passes the model."""
    cfg = Config(reads=("output", "h_n", "c_n"), layers=2, bidirectional=True, proj=2)
    model = model_for(cfg, torch.float64)
    assert ModuleValidator.validate(model, strict=True) == []
    x, lengths, _, _, targets = inputs(cfg, torch.float64)
    expected = per_sample_by_one_sample_passes(model, x, lengths, *inputs(cfg, torch.float64)[2:4],
                                               targets)
    norms = torch.stack([e.flatten(1).norm(dim=1) for e in expected]).norm(dim=0)
    max_norm = 0.5 * norms.min().item()
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    data = torch.utils.data.TensorDataset(x, lengths, targets)
    loader = torch.utils.data.DataLoader(data, batch_size=B)
    engine = PrivacyEngine()
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), data_loader=loader,
        noise_multiplier=0.0, max_grad_norm=max_norm, poisson_sampling=False)
    xb, lb, tb = next(iter(loader))
    nn.functional.cross_entropy(private(xb, lb), tb).backward()
    optimizer.step()
    for p, p0, e in zip(model.parameters(), before, expected, strict=True):
        clipped = (e * factor.view(-1, *[1] * (e.dim() - 1))).mean(0)
        torch.testing.assert_close(p0 - p.detach(), clipped, rtol=1e-8, atol=1e-12)


def test_private_training_learns():
    """A short private run (Poisson sampling, noise) on a task an LSTM can
    learn: whether a sequence's first feature sums positive."""
    torch.manual_seed(0)
    n, lengths = 512, torch.randint(1, T + 1, (512,))
    x = torch.randn(n, T, I) * (torch.arange(T) < lengths[:, None]).unsqueeze(2)
    targets = (x[:, :, 0].sum(1) > 0).long()
    model = Classifier(Config(reads=("h_n",)))
    data = torch.utils.data.TensorDataset(x, lengths, targets)
    engine = PrivacyEngine()
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
        data_loader=torch.utils.data.DataLoader(data, batch_size=64), noise_multiplier=0.5,
        max_grad_norm=1.0)

    def accuracy():
        with torch.no_grad():
            return (private(x, lengths).argmax(1) == targets).float().mean().item()

    first = accuracy()
    for _ in range(6):
        for xb, lb, tb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(private(xb, lb), tb).backward()
            optimizer.step()
    assert accuracy() > max(first, 0.75)
    assert 0 < engine.get_epsilon(delta=1e-5) < float("inf")


@pytest.mark.parametrize("mode", ["ghost", "ew"])
def test_modes_without_a_rule_are_refused(mode):
    with pytest.raises(NotImplementedError, match=f"lstm_ext.opacus: .*{mode}"
                       if mode == "ew" else "lstm_ext.opacus: Opacus's ghost clipping"):
        get_gsm_class(mode)(Classifier(Config()))


def test_weight_drop_is_refused():
    model = Classifier(Config())
    model.lstm.weight_drop = 0.5
    x, lengths, *_ = inputs(Config(), torch.float32)
    wrapped = GradSampleModule(model)
    with pytest.raises(NotImplementedError, match="weight_drop"):
        wrapped(x, lengths)
    model.lstm.weight_drop = 0.0
    wrapped(x, lengths)  # the refused call left nothing behind
    wrapped._close()


def test_importing_lstm_ext_does_not_import_opacus():
    code = "import sys, lstm_ext; assert 'opacus' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_empty_batch_gets_empty_per_sample_gradients():
    """Poisson sampling draws empty batches: every parameter then has a
    grad_sample of no samples, as Opacus's own layers give."""
    model = Classifier(Config(input="batch_first", reads=("output", "h_n")))
    wrapped = GradSampleModule(model)
    wrapped(torch.randn(0, T, I), torch.zeros(0, dtype=torch.long)).sum().backward()
    for p in model.parameters():
        assert p.grad_sample.shape == (0, *p.shape)
    wrapped._close()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_calls_of_different_batch_sizes(reduction):
    """The LSTM run on the batch and on its first two sequences in one
    forward: per-sample gradients of the batch's size (the second call's are
    zero past its two), a mean's scaled by the larger batch, as Opacus's own
    layers do; in either order of the calls."""
    torch.manual_seed(0)
    lstm = lstm_ext.LSTM(I, H, batch_first=True).double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    weights = torch.randn(H, dtype=torch.float64)

    def loss(model, x, first_small):
        calls = [x[:2], x] if first_small else [x, x[:2]]
        h = [model(part)[1][0][-1] for part in calls]
        total = (h[0] @ weights).sum() + (h[1] @ weights).sum()
        return total / B if reduction == "mean" else total

    expected = []
    for b in range(B):  # sample b's own loss: one term per call that saw it
        own = (lstm(x[b:b + 1])[1][0][-1] @ weights).sum() * (2 if b < 2 else 1)
        expected.append(torch.autograd.grad(own, list(lstm.parameters())))
    expected = [torch.stack(g) for g in zip(*expected)]
    for first_small in (False, True):
        wrapped = GradSampleModule(lstm, loss_reduction=reduction)
        loss(wrapped, x, first_small).backward()
        for p, e in zip(lstm.parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad_sample, e, rtol=1e-10, atol=1e-12)
        wrapped._close()
        lstm.zero_grad()


def test_autocast_on_padded_input_is_refused():
    model = Classifier(Config(input="padded"))
    x, lengths, *_ = inputs(Config(input="padded"), torch.float32)
    wrapped = GradSampleModule(model)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(NotImplementedError,
                                                                     match="autocast"):
        wrapped(x, lengths)
    wrapped._close()


def test_a_forward_that_raises_owes_no_backward():
    """Opacus counts a forward once its hook runs; a failed one leaves the
    next batch's per-sample gradients right."""
    cfg = Config(input="batch_first", reads=("h_n",))
    model = model_for(cfg, torch.float64)
    x, lengths, h0, c0, targets = inputs(cfg, torch.float64)
    expected = per_sample_by_one_sample_passes(model, x, lengths, h0, c0, targets)
    wrapped = GradSampleModule(model)
    with pytest.raises(RuntimeError):
        wrapped(x[..., :2], lengths)  # the wrong input size
    nn.functional.cross_entropy(wrapped(x, lengths), targets).backward()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad_sample, e, rtol=1e-10, atol=1e-12)
    wrapped._close()


def test_keyword_input_and_hooks_off_before_backward():
    model = lstm_ext.LSTM(I, H)
    x = torch.randn(T, B, I)
    wrapped = GradSampleModule(model)
    wrapped(input=x)[1][0].sum().backward()
    assert model.weight_ih_l0.grad_sample.shape == (B, 4 * H, I)
    wrapped.zero_grad()
    out = wrapped(input=x)[1][0].sum()
    wrapped.disable_hooks()  # Opacus's own hooks then take nothing either
    out.backward()
    assert model.weight_ih_l0.grad_sample is None
    wrapped._close()


def test_refused_ghost_clipping_leaves_the_model_as_it_was():
    model = Classifier(Config())
    with pytest.raises(NotImplementedError):
        get_gsm_class("ghost")(model)
    GradSampleModule(model)._close()  # no hooks left behind to clash with
