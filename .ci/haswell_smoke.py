"""lstm_ext on an AVX2-only CPU, emulated (qemu-x86_64 -cpu Haswell): the build
must import there, choose its AVX2 kernels and match nn.LSTM. nn.LSTM's oneDNN
layer itself cannot run under qemu, so its results are computed natively
first and compared with ours from under qemu.

usage: haswell_smoke.py           (native: the reference, then itself under qemu)
       haswell_smoke.py REF.pt    (under qemu: ours against the reference)
"""

import subprocess
import sys
import tempfile

import torch
from torch import nn

CASES = [  # module arguments, input shape (T, B, I), dtype
    (dict(input_size=8, hidden_size=24), (5, 3, 8), torch.float32),
    (dict(input_size=8, hidden_size=24, num_layers=2, bidirectional=True, proj_size=5),
     (5, 3, 8), torch.float32),
    (dict(input_size=8, hidden_size=17, bidirectional=True), (4, 2, 8), torch.float64),
]


def run(cls):
    """Outputs, final states and every gradient of each case, by `cls`."""
    results = []
    for i, (kwargs, shape, dtype) in enumerate(CASES):
        torch.manual_seed(i)
        module = cls(**kwargs).to(dtype)
        x = torch.randn(*shape, dtype=dtype, requires_grad=True)
        out, (h_n, c_n) = module(x)
        loss = out.sin().sum() + h_n.square().sum() + c_n.sum()
        grads = torch.autograd.grad(loss, [x, *module.parameters()])
        results.append([t.detach() for t in (out, h_n, c_n, *grads)])
    return results


def check(reference_path):
    import lstm_ext

    assert lstm_ext.cpu_kernels() == "avx2", f"chose {lstm_ext.cpu_kernels()} kernels"
    for expected, got in zip(torch.load(reference_path), run(lstm_ext.LSTM)):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    print("haswell smoke: imported, avx2 kernels, matches nn.LSTM")


def main():
    with tempfile.NamedTemporaryFile(suffix=".pt") as reference:
        torch.save(run(nn.LSTM), reference.name)
        subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, __file__,
                        reference.name], check=True, timeout=1800)


if __name__ == "__main__":
    check(sys.argv[1]) if len(sys.argv) > 1 else main()
