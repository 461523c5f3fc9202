"""Devices and torch.distributed (torchrun) plumbing, NCCL on GPUs and gloo on CPU."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = -1        # global rank, -1 when not distributed
    local_rank: int = -1
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)


def dist_info_from_env() -> DistInfo:
    """What torchrun put in the environment (RANK, LOCAL_RANK, WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world)


def select_device(spec: str = "", info: DistInfo = DistInfo()) -> torch.device:
    """'' (auto), 'cpu', '0' or '0,1,2,3'. Under torchrun each rank takes cuda:LOCAL_RANK."""
    spec = str(spec).strip().lower().replace("cuda:", "")
    if spec == "cpu":
        return torch.device("cpu")
    if spec and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    if spec:
        ids = [s for s in spec.split(",") if s]
        bad = [s for s in ids if not s.isdigit() or int(s) >= torch.cuda.device_count()]
        if bad:
            raise ValueError(f"--device {spec}: no such CUDA device {bad} "
                             f"({torch.cuda.device_count()} visible)")
        if info.enabled:
            return torch.device("cuda", int(ids[info.local_rank % len(ids)]))
        return torch.device("cuda", int(ids[0]))
    if torch.cuda.is_available():
        return torch.device("cuda", max(info.local_rank, 0))
    return torch.device("cpu")


def init_distributed(info: DistInfo, device: torch.device, timeout_min: int = 30) -> None:
    if not info.enabled or tdist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, timeout=timedelta(minutes=timeout_min))


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
