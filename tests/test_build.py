"""setup.py's choices that a build on another machine depends on: the CUDA
toolkit must be the CUDA of the torch in use, and nothing in setup.py names a
CUDA version."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.version.cuda is None, reason="torch is not a CUDA build")
def test_nvcc_of_another_cuda_version_stops_the_build(tmp_path):
    other = "11.8" if not torch.version.cuda.startswith("11.") else "12.4"
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {other}, V{other}.0'\n")
    nvcc.chmod(0o755)
    env = dict(os.environ, CUDA_HOME=str(tmp_path), LSTM_EXT_CUDA="1")
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"is CUDA {other}, but torch {torch.__version__} was built with CUDA " \
           f"{torch.version.cuda}" in result.stderr


def test_setup_names_no_cuda_version():
    """Headers, libraries and architectures come from the torch and GPU in use."""
    source = (ROOT / "setup.py").read_text()
    assert not re.search(r"cu1\d|\.so\.1\d|cuda-1\d", source)
