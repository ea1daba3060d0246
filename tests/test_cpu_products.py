"""The CPU's products (csrc/cpu/gemm*.cpp) on their own, through the executor's
entry points, against float64: odd and even depths (a 16-bit product's odd
depth is the case AMX cannot take), tails of every size, long sums in slices;
and the checks of the one call into oneDNN's brgemm for 16-bit operands
(brgemm_pairs), which run on every machine."""

import contextlib
import itertools
import subprocess
import sys

import pytest
import torch

import lstm_ext  # noqa: F401  (registers the ops)
from cpu_native import reduced_path

ops = torch.ops.lstm_ext
KINDS = ("step", "sequence", "weight")
# Depths: 1 (no pair at all), odd and even around a pair, around a slice (512).
SHAPES = list(itertools.product((1, 3, 64, 65), (1, 2, 3, 15, 16, 511, 513, 1025), (1, 20, 65)))


def product(a, b, kind, c=None):
    """a @ b (+ c) through the CPU product of that kind ("weight" takes a
    transposed)."""
    return ops._cpu_product(a.t().contiguous() if kind == "weight" else a, b, kind, c)


@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_products_match_float64(kind, dtype, accumulate):
    """bfloat16 and float16 on the native path (16-bit operands, float sums): as
    close to float64 as float32's rounding of the sum allows, whatever the depth,
    written over C or added to it."""
    reduced = dtype in (torch.bfloat16, torch.float16)
    math = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(0)
    with reduced_path("native", dtype) if reduced else contextlib.nullcontext():
        for m, k, n in SHAPES:
            a = torch.randn(m, k, generator=gen).to(dtype)
            b = torch.randn(k, n, generator=gen).to(dtype)
            c = torch.randn(m, n, generator=gen, dtype=math) if accumulate else None
            exact = a.double() @ b.double() + (c.double() if accumulate else 0)
            got = product(a, b, kind, c)
            assert got.shape == (m, n)
            assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            err = (got.double() - exact).abs().max().item()
            assert err <= tol * k**0.5 * 4, (m, k, n, err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_brgemm_checks_its_preconditions(dtype):
    """Where oneDNN's kernel for dtype takes B in pairs: even depths pass and are
    exact, an odd one is refused (AMX would die on it). Elsewhere every call is
    refused."""
    a = torch.randint(-4, 5, (3, 5)).to(dtype)
    b = torch.randint(-4, 5, (5, 20)).to(dtype)
    if ops._cpu_pairs_kernel(dtype):
        for k in (2, 4):
            got = ops._cpu_product(a[:, :k], b[:k], "brgemm")
            assert torch.equal(got, a[:, :k].float() @ b[:k].float())
        with pytest.raises(RuntimeError, match="k even and positive.*got m=3 n=20 k=5"):
            ops._cpu_product(a, b, "brgemm")
    else:
        with pytest.raises(RuntimeError, match="does not take"):
            ops._cpu_product(a[:, :4], b[:4], "brgemm")


TILES = """
import torch, lstm_ext
ops = torch.ops.lstm_ext
a, b = torch.ones(3, 4).bfloat16(), torch.ones(4, 20).bfloat16()
ops._cpu_product(a, b, "brgemm", None, False)
x = torch.randn(64, 64).bfloat16()
(x @ x).sum()
print(ops._cpu_product(a, b, "brgemm").sum().item())
"""


def test_a_task_configures_its_tiles_itself():
    """A brgemm that leaves ATen's tile state behind (as a careless library
    would), then oneDNN's own AMX code (a bfloat16 matmul, which releases the
    tiles), then our product of the same kernel: ATen believes the tiles are
    still set for it, so our task must release first, or the product dies on
    AMX (SIGILL). In a process of its own; without AMX it holds trivially."""
    if not ops._cpu_pairs_kernel(torch.bfloat16):
        pytest.skip("bfloat16 products take no pairs here")
    done = subprocess.run([sys.executable, "-c", TILES], capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["240.0"]


def test_brgemm_takes_no_pairs_without_onednn():
    a, b = torch.ones(2, 4).bfloat16(), torch.ones(4, 8).bfloat16()
    with torch.backends.mkldnn.flags(enabled=False):
        assert not ops._cpu_pairs_kernel(torch.bfloat16)
        with pytest.raises(RuntimeError, match="does not take"):
            ops._cpu_product(a, b, "brgemm")


def test_products_refuse_what_they_do_not_take():
    with pytest.raises(RuntimeError, match="unknown kind"):
        ops._cpu_product(torch.ones(2, 2), torch.ones(2, 2), "other")
    with pytest.raises(RuntimeError, match="do not chain"):
        ops._cpu_product(torch.ones(2, 3), torch.ones(2, 2), "step")
