"""Devices and torch.distributed (torchrun) plumbing, NCCL on GPUs and gloo on CPU."""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as tdist

LOG = logging.getLogger("gradpath.dist")
LEADER_TIMEOUT_S = 3 * 3600.0  # how long a rank waits for its node's local rank 0 (a full-COCO index build)
HEARTBEAT_S = 60.0             # a waiting rank says so this often
FAILED = "\x00failed"         # what the leader publishes when its work raised


@dataclass(frozen=True)
class DistInfo:
    rank: int = -1        # global rank, -1 when not distributed
    local_rank: int = -1
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Launched by torchrun, even with one process: the same NCCL/DDP path as on many GPUs."""
        return self.rank >= 0

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)


def dist_info_from_env() -> DistInfo:
    """What torchrun put in the environment (RANK, LOCAL_RANK, WORLD_SIZE); not distributed
    without it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))


def select_device(spec: str = "", info: DistInfo = DistInfo(), several: bool = False) -> torch.device:
    """'' (auto), 'cpu', '0', 'cuda:0' or '0,1,2,3'. Under torchrun each rank takes the
    LOCAL_RANK-th listed device. Outside torchrun a list of several is an error, unless
    `several` (inference: the first is used). Every problem is a one-line ValueError."""
    spec = str(spec).strip().lower().replace(" ", "")
    if spec == "cpu":
        return torch.device("cpu")
    ids = _parse_ids(spec)
    if (ids or spec == "cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: {_why_no_cuda()}; use --device cpu")
    if not ids:  # auto, or plain 'cuda'
        if not torch.cuda.is_available():
            return torch.device("cpu")
        ids = list(range(torch.cuda.device_count()))
        if not info.enabled:
            ids = ids[:1]
    count = torch.cuda.device_count()
    bad = [i for i in ids if i >= count]
    if bad:
        raise ValueError(f"--device {spec}: no CUDA device {','.join(map(str, bad))} "
                         f"({count} visible: {', '.join(map(str, range(count))) or 'none'})")
    if info.enabled:
        if info.local_rank >= len(ids):
            raise ValueError(f"--device {spec or 'auto'}: {len(ids)} GPU(s) for local rank {info.local_rank}; "
                             f"start at most {len(ids)} processes per node (torchrun --nproc_per_node)")
        return torch.device("cuda", ids[info.local_rank])
    if len(ids) > 1 and not several:
        raise ValueError(f"--device {spec}: one process trains on one GPU; for {len(ids)} GPUs run "
                         f"torchrun --nproc_per_node {len(ids)} train.py ... --device {spec}")
    return torch.device("cuda", ids[0])


def _parse_ids(spec: str) -> list[int]:
    """'0,1' or 'cuda:0' -> [0, 1] / [0]; '' and 'cuda' -> []."""
    if spec in ("", "cuda"):
        return []
    parts = [s.removeprefix("cuda:") for s in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"--device {spec}: expected cpu, a CUDA index such as 0, or a list such as 0,1,2,3")
    ids = [int(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--device {spec}: a GPU is listed twice")
    return ids


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible!r})"
    return f"CUDA is not available (torch {torch.__version__} found no NVIDIA driver or GPU)"


def init_distributed(info: DistInfo, device: torch.device, timeout_min: int = 30) -> None:
    if not info.enabled or tdist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, timeout=timedelta(minutes=timeout_min))
    LOG.info("torch.distributed: %s backend, rank %d of %d on %s", backend, info.rank, info.world_size, device)


def barrier(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.barrier()


def all_reduce_max(value: float, info: DistInfo, device: torch.device) -> float:
    """The max of a scalar over ranks (used so every rank takes the same branch and none hangs)."""
    if not (info.enabled and tdist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# ---- node-local coordination: local rank 0 does the work once, its node's other ranks wait ------
def _store(info: DistInfo):
    """A client of the run's key-value store (torchrun's, at MASTER_ADDR:MASTER_PORT), or None when
    this process is not part of an initialised process group. Store keys, unlike collectives, need
    no call from the ranks that do not take part (a split may be built on some ranks only)."""
    if not (info.enabled and tdist.is_available() and tdist.is_initialized()):
        return None
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    return tdist.TCPStore(addr, int(port), is_master=False, wait_for_workers=False, timeout=timedelta(minutes=5))


def node_key(key: str) -> str:
    """`key` scoped to this node and to this attempt of the run (torchrun restarts workers with a
    new count: a value published by the failed attempt is not taken for this one's)."""
    node = os.environ.get("GROUP_RANK") or socket.gethostname()
    return f"gradpath/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{node}/{key}"


def from_local_leader(info: DistInfo, key: str, what: str, compute: Callable[[], str],
                      timeout_s: float = LEADER_TIMEOUT_S) -> str | None:
    """compute() once per node: local rank 0 (and any process outside torchrun) runs it and returns
    its value; the node's other ranks wait for that value (saying so every HEARTBEAT_S, so that a
    waiting rank does not look hung) and return it, or None when the leader's compute() raised (the
    leader reports its own error; the caller may then do the work itself). `what` completes
    "waiting for local rank 0 to ...". Past timeout_s a waiting rank raises TimeoutError."""
    store = _store(info)
    if store is None:
        return compute()
    k = node_key(key)
    if info.local_rank == 0:
        try:
            value = compute()
        except BaseException:
            store.set(k, FAILED)
            raise
        store.set(k, value)
        return value
    value = _wait(store, k, info, what, timeout_s)
    return None if value == FAILED else value


def _wait(store, k: str, info: DistInfo, what: str, timeout_s: float, poll_s: float = 0.2) -> str:
    """Poll the store for k (check() does not block, so no timed-out waits fill the log)."""
    t0 = time.monotonic()
    said = t0
    LOG.info("rank %d: waiting for local rank 0 to %s", info.rank, what)
    while not store.check([k]):
        now = time.monotonic()
        if now - t0 >= timeout_s:
            raise TimeoutError(f"rank {info.rank}: local rank 0 did not {what} within {timeout_s:.0f} s")
        if now - said >= HEARTBEAT_S:
            LOG.info("rank %d: still waiting for local rank 0 to %s (%.0f s)", info.rank, what, now - t0)
            said = now
        time.sleep(min(poll_s, HEARTBEAT_S))
    LOG.info("rank %d: local rank 0 is done (waited %.1f s)", info.rank, time.monotonic() - t0)
    return store.get(k).decode()


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's `obj` (picklable), in rank order, on rank 0; None on the other ranks. [obj]
    outside torch.distributed. gather_object, not all_gather_object: only rank 0 holds them all."""
    if not (info.enabled and tdist.is_initialized()):
        return [obj]
    out = [None] * info.world_size if info.rank == 0 else None
    tdist.gather_object(obj, out, dst=0)
    return out


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Rank src's parameters and buffers into every rank's `module` (the same architecture on all),
    one flat broadcast per dtype rather than one per tensor."""
    if not (info.enabled and tdist.is_initialized()):
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in module.state_dict().values():  # views of the module's own tensors
        by_dtype.setdefault(t.dtype, []).append(t)
    for tensors in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        tdist.broadcast(flat, src)
        if info.rank != src:
            for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(v.view_as(t))
