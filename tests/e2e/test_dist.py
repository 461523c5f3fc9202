"""The cross-rank decisions of the trainer on a real 2-process gloo group (CPU)."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from utils.dist import DistInfo, all_reduce_max


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    info = DistInfo(rank=rank, local_rank=rank, world_size=2)
    try:
        # only rank 1 sees a non-finite loss: both must take the skip branch
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        results[rank] = all_reduce_max(float(not torch.isfinite(loss)), info, torch.device("cpu"))
    finally:
        tdist.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_makes_every_rank_skip():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: 1.0, 1: 1.0}
