"""lstm_ext: a fused LSTM for PyTorch, one C++/CUDA op per layer and direction."""

import torch

from .functional import lstm, lstm_layer
from .module import LSTM

__version__ = "0.1.0"
__all__ = ["LSTM", "cpu_kernels", "lstm", "lstm_layer", "__version__"]


def cpu_kernels() -> str:
    """The instruction-set level of the CPU kernels in use: "avx512", "avx2" or
    "default", the best this CPU has (as ATen reads it), or the level
    ATEN_CPU_CAPABILITY asks for, if lower."""
    return torch.ops.lstm_ext.cpu_kernels()
