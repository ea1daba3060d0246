"""Choosing how bfloat16/float16 layers run on the CPU for a test: natively
(products on 16-bit operands, fp32 accumulation; where the CPU has those dot
products) or in float32 on upcast copies, so that tests reach both paths."""

import contextlib

import pytest
import torch

PATHS = ("native", "upcast")


@contextlib.contextmanager
def reduced_path(path, dtype=torch.bfloat16):
    """Within: `dtype` layers take `path`; "native" skips the test where the CPU
    cannot run it."""
    previous = torch.ops.lstm_ext._cpu_native_off(path == "upcast")
    try:
        if path == "native" and not torch.ops.lstm_ext.cpu_native(dtype):
            pytest.skip(f"{dtype} does not run natively here (python -m lstm_ext.check says why)")
        yield
    finally:
        torch.ops.lstm_ext._cpu_native_off(previous)
