"""`python -m lstm_ext.check`: it reports this machine's paths, passes here, and
turns a crashed or failing path into a failure of that path and a non-zero
exit status."""

import os
import subprocess
import sys

import torch

import lstm_ext
from lstm_ext import check


def test_every_path_passes_here():
    done = subprocess.run([sys.executable, "-m", "lstm_ext.check"], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    out = done.stdout
    assert f"CPU kernels: {lstm_ext.cpu_kernels()}" in out
    assert "oneDNN: " in out
    for name in ("bfloat16", "float16"):
        native = lstm_ext.cpu_native(getattr(torch, name))
        assert f"\n{name}: {'native' if native else 'upcast'}" in out
        assert (f"\n{name} (cpu, native): ok" in out) == native
        assert f"\n{name} (cpu, upcast): ok" in out
    assert "\nfloat32 (cpu): ok" in out
    assert out.rstrip().endswith("every path passed")


def test_a_crash_fails_its_path_only(tmp_path, monkeypatch):
    """A path whose process dies (as with SIGILL on an instruction the CPU lacks)
    is reported with its signal."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    ok, lines = check.run_path(check.Path("float32", "cpu", False))
    assert not ok and lines[0] == "crashed: SIGILL", lines


def test_a_failed_path_fails_the_command(monkeypatch, capsys):
    chosen = {"bfloat16": [True, False, "(why)"], "float16": [False, False, "(why)"]}
    monkeypatch.setattr(check, "run_child", lambda args, env=None: (chosen, []))
    monkeypatch.setattr(check, "describe", lambda chosen: ["(machine)"])
    monkeypatch.setattr(check, "run_path", lambda path: (path.dtype != "float16", ["(why)"]))
    assert check.main([]) == 1
    out = capsys.readouterr().out
    assert "bfloat16 (cpu, native): ok" in out
    assert "float16 (cpu, upcast): FAILED\n    (why)" in out
    assert out.rstrip().endswith("failed: float16 (cpu, upcast)")


def test_a_failed_choice_fails_the_command():
    """A malformed setting (or a crash in the probe product) is reported by the
    command, not raised in it."""
    env = {**os.environ, "LSTM_EXT_CPU_NATIVE": "bf16"}
    done = subprocess.run([sys.executable, "-m", "lstm_ext.check"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert done.stdout.startswith("the native path's choice FAILED:\n    exit status 1")
    assert "LSTM_EXT_CPU_NATIVE: expected 0, 1, or a comma-separated list" in done.stdout


def test_a_path_that_is_not_taken_fails():
    """Asked to check the native path where it is off (or the other way), the
    check says so instead of checking the other path."""
    native = lstm_ext.cpu_native(torch.bfloat16)
    result = check.check_path(check.Path("bfloat16", "cpu", not native))
    assert not result["ok"] and "path, but cpu_native(bfloat16) is" in result["lines"][0]
