"""Dropout between layers: none in eval mode; in training mode the same mask as
nn.LSTM draws from the same seed, hence the same outputs and gradients."""

import dataclasses
import itertools

import pytest
import torch

from module_reference import INPUTS, ModuleCase, ModuleProblem, assert_same_results, twins
from reference import tolerance

TRAINING = [
    ModuleCase(
        layers=3, bidirectional=bidirectional, batch_first=batch_first, proj=proj, input=input,
        dropout=0.4, dtype=dtype,
    )
    for bidirectional, batch_first, proj, input, dtype in itertools.product(
        (False, True), (False, True), (0, 3), INPUTS, (torch.float64, torch.float32)
    )
]
TRAINING += [
    ModuleCase(layers=2, dropout=1.0, input="padded"),
    ModuleCase(layers=2, dropout=1.0, input="packed", dtype=torch.float32),
    ModuleCase(layers=2, dropout=0.9, bidirectional=True, hx=False, dtype=torch.float32),
]


def run_seeded(problem, module, seed=7):
    torch.manual_seed(seed)
    return problem.run(module)


@pytest.mark.parametrize("case", TRAINING, ids=str)
def test_training_matches_nn_lstm_seed_for_seed(case):
    ref, ours = twins(case)
    problem = ModuleProblem(case)
    got = run_seeded(problem, ours)
    assert_same_results(got, run_seeded(problem, ref), **tolerance(case.dtype))
    ours.eval()
    assert not torch.allclose(got.y, run_seeded(problem, ours).y), "dropout had no effect"


@pytest.mark.parametrize("input", ["padded", "packed"])
def test_training_bfloat16_draws_nn_lstms_mask(input):
    case = ModuleCase(layers=3, bidirectional=True, dropout=0.5, input=input,
                      dtype=torch.bfloat16)
    ref, ours = twins(case)
    problem = ModuleProblem(case)
    got, expected = run_seeded(problem, ours), run_seeded(problem, ref)
    # A different mask would differ by about the outputs' size, not by rounding.
    for name in ("y", "h_n", "c_n"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name),
                                   atol=1.6e-2, rtol=0)


@pytest.mark.parametrize("input", INPUTS)
def test_eval_is_deterministic_and_matches_nn_lstm(input):
    case = ModuleCase(layers=3, bidirectional=True, proj=3, dropout=0.5, input=input)
    ref, ours = twins(case)
    ref.eval()
    ours.eval()
    problem = ModuleProblem(case)
    first = run_seeded(problem, ours, seed=1)
    assert_same_results(run_seeded(problem, ours, seed=2), first, rtol=0, atol=0)
    assert_same_results(first, run_seeded(problem, ref, seed=3), **tolerance(case.dtype))


def test_seeds_draw_different_masks():
    case = ModuleCase(layers=2, dropout=0.5)
    _, ours = twins(case)
    problem = ModuleProblem(case)
    assert not torch.allclose(run_seeded(problem, ours, 1).y, run_seeded(problem, ours, 2).y)


def test_single_layer_has_no_dropout():
    case = ModuleCase(layers=1, dropout=0.5)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        _, ours = twins(case)
    problem = ModuleProblem(case)
    training = run_seeded(problem, ours)
    ours.eval()
    assert_same_results(training, run_seeded(problem, ours), rtol=0, atol=0)


def test_training_flag_follows_the_module():
    case = dataclasses.replace(TRAINING[0], dtype=torch.float64)
    ref, ours = twins(case)
    problem = ModuleProblem(case)
    for mode in (False, True):
        ref.train(mode)
        ours.train(mode)
        assert_same_results(run_seeded(problem, ours), run_seeded(problem, ref), rtol=1e-10,
                            atol=1e-10)
