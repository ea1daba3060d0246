"""DistributedDataParallel over gloo, two processes on loopback: training
lstm_ext.LSTM on halves of a batch gives the gradients of the whole batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext

BATCH, STEPS = 8, 7


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = lstm_ext.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=4)
        self.head = nn.Linear(8, 3)

    def forward(self, x, lengths):
        out, _ = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return self.head(out.data).square().sum()


def _data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, 5, generator=gen)
    lengths = torch.randint(1, STEPS + 1, (BATCH,), generator=gen)
    return x, lengths


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _worker(rank, world, port, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(Model())
        x, lengths = _data()
        half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        # DDP averages the ranks' gradients: scaled so that the average is the
        # gradient of the global batch's mean.
        (model(x[:, half], lengths[half]) * world / int(lengths.sum())).backward()
        if rank == 0:
            torch.save(_grads(model.module), path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Gloo's threads can abort the process while the interpreter tears down
    # (std::terminate, seen about once in six runs): skip the teardown once
    # the work is done.
    os._exit(0)


def test_ddp_gradients_equal_the_single_process_ones(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, port, str(path)), nprocs=2, join=True)

    x, lengths = _data()
    model = Model()
    (model(x, lengths) / int(lengths.sum())).backward()
    for a, b in zip(torch.load(path), _grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
