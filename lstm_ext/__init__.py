"""lstm_ext: a fused LSTM for PyTorch, one C++/CUDA op per layer and direction."""

from .functional import lstm, lstm_layer
from .module import LSTM

__version__ = "0.1.0"
__all__ = ["LSTM", "lstm", "lstm_layer", "__version__"]
