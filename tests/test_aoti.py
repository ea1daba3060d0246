"""AOTInductor: a model holding lstm_ext.LSTM exported, compiled into a package, and
run from the package in a fresh Python process that imports lstm_ext (whose ops
the compiled code calls)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lstm_ext

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                       reason="torch 2.14.1's Inductor is wrong under a lowered "
                              "ATEN_CPU_CAPABILITY (see compile_backend.py)"),
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="the package's C++ compiler would run under AddressSanitizer"),
    pytest.mark.filterwarnings("ignore:The tensor attributes self.lstm._flat_weights"),
]


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        y, (h_n, c_n) = self.lstm(x)
        return self.head(y), h_n, c_n


def test_package_runs_in_a_fresh_process(tmp_path):
    model = Tagger().eval()
    x = torch.randn(3, 5, 4)
    batch = torch.export.Dim("batch", min=2)
    with torch._dynamo.config.patch(allow_rnn=True), torch.no_grad():
        exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        package = torch._inductor.aoti_compile_and_package(
            exported, package_path=str(tmp_path / "tagger.pt2"))
    other = torch.randn(7, 5, 4)
    with torch.no_grad():
        torch.save({"inputs": [x, other], "expected": [model(x), model(other)]},
                   tmp_path / "io.pt")
    script = textwrap.dedent("""
        import sys, torch
        import lstm_ext  # registers the ops the package calls
        runner = torch._inductor.aoti_load_package(sys.argv[1])
        io = torch.load(sys.argv[2])
        for x, expected in zip(io["inputs"], io["expected"]):
            torch.testing.assert_close(tuple(runner(x)), expected, rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    # The lstm_ext this test imported, wherever it lives (source tree or site-packages).
    where = str(pathlib.Path(lstm_ext.__file__).parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (where, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", script, package, str(tmp_path / "io.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
