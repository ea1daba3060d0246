"""A short run of every example."""

import importlib.util
import json
import pathlib

import pytest
import torch

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_char_lm_both_implementations_learn_the_same_curve(tmp_path):
    char_lm = _load("char_lm")
    threads = torch.get_num_threads()
    try:
        summary = char_lm.main(["--steps", "8", "--chars", "50000", "--hidden", "32",
                                "--batch", "4", "--seq", "16", "--sample", "40", "--quiet",
                                "--out", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    torch_run, ours = summary["runs"]
    assert torch_run["losses"][-1] < torch_run["losses"][0]  # it learns
    # Same seed, same batches: float32 rounding apart, the same curve.
    assert summary["max_loss_gap"] < 1e-4
    # Sampled a step at a time through the kept layouts; the same draws from
    # (nearly) the same probabilities.
    for run in (torch_run, ours):
        assert len(run["sample"]) == 40 and run["chars_per_second"] > 0
    assert ours["sample"] == torch_run["sample"]
    assert (tmp_path / "run.png").stat().st_size > 0
    assert json.loads((tmp_path / "run.json").read_text())["speedup"] > 0


def test_private_classifier_learns_in_both_opacus_modes():
    pytest.importorskip("opacus")
    private_classifier = _load("private_classifier")
    threads = torch.get_num_threads()
    runs = {}
    try:
        for mode in ("hooks", "functorch"):
            runs[mode] = private_classifier.main(["--lines", "1600", "--epochs", "2",
                                                  "--mode", mode])["history"]
    finally:
        torch.set_num_threads(threads)
    for history in runs.values():
        assert history[-1]["test_accuracy"] > 0.7  # half the lines are comments
        assert 0 < history[0]["epsilon"] < history[-1]["epsilon"] < 10
    # Opacus computes the other layers' per-sample gradients in two ways, the
    # LSTM's are the fused backward's in both: the same run, up to rounding.
    for a, b in zip(runs["hooks"], runs["functorch"]):
        assert abs(a["loss"] - b["loss"]) < 1e-4
