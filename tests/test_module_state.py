"""lstm_ext.LSTM as a module among modules: initialisation, state_dict both ways,
dtype and device moves, copies, pickling, torch.func, and a model trained with it."""

import copy
import dataclasses
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstm_ext
from module_reference import ModuleCase, ModuleProblem, assert_same_results, twins
from reference import tolerance

CASE = ModuleCase(layers=2, bidirectional=True, proj=3, input="packed")
KWARGS = CASE.kwargs()


def assert_same_run(a, b, case=CASE, **tol):
    problem = ModuleProblem(case)
    assert_same_results(problem.run(a), problem.run(b), **(tol or tolerance(case.dtype)))


def test_initialisation_is_nn_lstms():
    torch.manual_seed(3)
    ref = nn.LSTM(**KWARGS)
    torch.manual_seed(3)
    ours = lstm_ext.LSTM(**KWARGS)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(4)
    ref.reset_parameters()
    torch.manual_seed(4)
    ours.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))


def test_state_dict_both_ways():
    torch.manual_seed(0)
    ref, ours = nn.LSTM(**KWARGS).double(), lstm_ext.LSTM(**KWARGS).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_same_run(ours, ref)
    ours.reset_parameters()
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert_same_run(ours, ref)


@pytest.mark.parametrize(
    "convert, dtype",
    [
        (lambda m: m.float(), torch.float32),
        (lambda m: m.to(torch.float32), torch.float32),
        (lambda m: m.bfloat16(), torch.bfloat16),
        (lambda m: m.half(), torch.float16),
        (lambda m: m.float().double(), torch.float64),
    ],
    ids=["float", "to-float32", "bfloat16", "half", "float-double"],
)
def test_dtype_conversions(convert, dtype):
    ref, ours = twins(CASE)
    ref, ours = convert(ref), convert(ours)
    assert type(ours) is lstm_ext.LSTM
    assert all(w.dtype == dtype for w in ours._flat_weights)
    if dtype in (torch.float32, torch.float64):
        assert_same_run(ours, ref, dataclasses.replace(CASE, dtype=dtype))
    else:
        out, _ = ours(torch.randn(5, 3, CASE.I, dtype=dtype))
        assert out.dtype == dtype


@pytest.mark.parametrize(
    "clone",
    [
        copy.deepcopy,
        lambda m: pickle.loads(pickle.dumps(m)),
        lambda m: torch.load(io.BytesIO(save(m)), weights_only=False),
    ],
    ids=["deepcopy", "pickle", "torch.save"],
)
def test_copies(clone):
    ref, ours = twins(CASE)
    copied = clone(ours)
    assert type(copied) is lstm_ext.LSTM and copied is not ours
    assert_same_run(copied, ref)


def save(module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    return buffer.getvalue()


def test_functional_call_and_reassigned_weights():
    ref, ours = twins(CASE)
    x = ModuleProblem(CASE).inputs()[-1]
    params = {name: torch.randn_like(p) for name, p in ref.named_parameters()}
    got = torch.func.functional_call(ours, params, (x,))
    expected = torch.func.functional_call(ref, params, (x,))
    torch.testing.assert_close(got[0].data, expected[0].data, rtol=1e-10, atol=1e-10)
    for module in (ref, ours):
        module.weight_hh_l1_reverse = nn.Parameter(params["weight_hh_l1_reverse"])
    assert_same_run(ours, ref)


def test_meta_device():
    ref, ours = twins(ModuleCase(layers=2, bidirectional=True, proj=3))
    x = torch.randn(5, 3, 4, dtype=torch.float64, device="meta")
    got, expected = ours.to("meta")(x), ref.to("meta")(x)
    assert got[0].device.type == "meta"
    assert got[0].shape == expected[0].shape
    assert [t.shape for t in got[1]] == [t.shape for t in expected[1]]


class Tagger(nn.Module):
    """A model written for nn.LSTM: packed variable-length batches, dropout."""

    def __init__(self, lstm=nn.LSTM):
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.lstm = lstm(5, 6, num_layers=2, bidirectional=True, batch_first=True,
                         dropout=0.3, proj_size=4)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens, lengths):
        x = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True,
                                 enforce_sorted=False)
        out, _ = self.lstm(x)
        out, _ = pad_packed_sequence(out, batch_first=True)
        return self.head(out)


def test_a_model_trains_the_same_with_either():
    torch.manual_seed(0)
    ref = Tagger().double()
    ours = Tagger(lstm_ext.LSTM).double()
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (4, 6), generator=gen)
    lengths = torch.tensor([6, 2, 5, 3])
    labels = torch.randint(0, 3, (4, 6), generator=gen)
    losses = []
    for model in (ref, ours):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(2)
        for _ in range(3):
            logits = model(tokens, lengths)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    torch.testing.assert_close(losses[:3], losses[3:], rtol=1e-10, atol=1e-10)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
