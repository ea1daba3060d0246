"""lstm_ext: a fused LSTM for PyTorch, one C++/CUDA op per layer and direction."""

import torch

from .functional import lstm, lstm_layer
from .module import LSTM

__version__ = "0.1.0"
__all__ = ["LSTM", "cpu_kernels", "cpu_native", "lstm", "lstm_layer", "__version__"]


def cpu_kernels() -> str:
    """The instruction-set level of the CPU kernels in use: "avx512", "avx2" or
    "default", the best this CPU has (as ATen reads it), or the level
    ATEN_CPU_CAPABILITY asks for, if lower."""
    return torch.ops.lstm_ext.cpu_kernels()


def cpu_native(dtype: torch.dtype) -> bool:
    """Whether `dtype` (bfloat16 or float16) layers run natively on this CPU:
    products on operands of that dtype with float32 accumulation, on oneDNN's
    dot products of it. bfloat16 does where the CPU has AVX512_BF16 or
    AMX-BF16 and ONEDNN_MAX_CPU_ISA leaves them to oneDNN; float16 only on
    AMX-FP16 and when LSTM_EXT_CPU_NATIVE=bfloat16,float16 asks for it.
    Otherwise they run in float32 on upcast copies. LSTM_EXT_CPU_NATIVE=0 in
    the environment turns the native path off, and so do ATEN_CPU_CAPABILITY
    below avx512 and torch.backends.mkldnn turned off. `python -m
    lstm_ext.check` says why."""
    return torch.ops.lstm_ext.cpu_native(dtype)
