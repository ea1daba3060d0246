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
    monkeypatch.setattr(check, "describe", lambda: ["(machine)"])
    monkeypatch.setattr(check, "run_path", lambda path: (path.dtype != "float16", ["(why)"]))
    assert check.main([]) == 1
    out = capsys.readouterr().out
    assert "float16 (cpu, upcast): FAILED\n    (why)" in out
    assert out.rstrip().endswith("failed: " + ", ".join(
        p.name for p in check.paths() if p.dtype == "float16"))


def test_a_path_that_is_not_taken_fails():
    """Asked to check the native path where it is off (or the other way), the
    check says so instead of checking the other path."""
    native = lstm_ext.cpu_native(torch.bfloat16)
    result = check.check_path(check.Path("bfloat16", "cpu", not native))
    assert not result["ok"] and "path, but cpu_native(bfloat16) is" in result["lines"][0]
