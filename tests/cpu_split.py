"""Forcing how the CPU shares a layer's steps between its threads (by sequences
or by hidden units; the shape chooses otherwise), so that tests reach both on
small shapes."""

import contextlib

import torch

SEQUENCES, UNITS = 0, 1


@contextlib.contextmanager
def cpu_split(choice, threads=2):
    """Within: every layer splits its steps by `choice`, on `threads` threads."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    previous = torch.ops.lstm_ext._cpu_split(choice)
    try:
        yield
    finally:
        torch.ops.lstm_ext._cpu_split(previous)
        torch.set_num_threads(previous_threads)
