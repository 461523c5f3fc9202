"""Speed and memory measurements shared by the scripts in benchmarks/ (gpu_check.py included):
training steps on real mosaic batches, model forward latency, and the data loader's rate."""
from __future__ import annotations

import copy
import resource
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from data.config import DataConfig
from data.loader import build_dataset, collate
from engine.device import Precision
from engine.train.optim import build_optimizer
from models.loss.losses import build_criterion
from engine.config import Hyp
from utils.memory import process_tree_rss
from utils.structures import Batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """The CUDA allocator's peak since the last reset on a GPU; the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def mosaic_batches(data_cfg: DataConfig, img_size: int, batch_size: int, n: int, stride: int = 32,
                   workers: int = 0, seed: int = 0) -> list[Batch]:
    """n real training batches (mosaic, the training augmentation, segment labels) of batch_size
    each, drawn with repetition so that a batch may hold more images than a small dataset has."""
    dataset = build_dataset(data_cfg, "train", img_size, batch_size, Hyp.load().aug, stride=stride)
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(len(dataset), (n, batch_size), generator=g).tolist()
    sampler = [[(k, 0) for k in row] for row in keys]
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    return list(loader)


@dataclass
class StepRate:
    images_per_s: float
    seconds_per_step: float  # median of the timed steps
    peak_gib: float
    warmup_s: float  # the untimed first steps (cuDNN autotuning, torch.compile's compilation)


def first_images(batch: Batch, k: int) -> Batch:
    """The first k images of a batch with their instances."""
    keep = batch.batch_idx < k
    return Batch(batch.images[:k], batch.batch_idx[keep], batch.classes[keep], batch.boxes[keep], batch.masks[keep],
                 batch.image_ids[:k], batch.paths[:k], batch.orig_shapes[:k], batch.ratio_pads[:k])


def train_step_rate(model: nn.Module, batches: list[Batch], device: torch.device, precision: Precision,
                    fmt: torch.memory_format = torch.contiguous_format, warmup: int = 1) -> StepRate:
    """Forward + loss + backward + SGD step, timed on the device (batches moved there first, so
    the figure is the GPU's own rate; the loader's is measured apart). The model is trained in
    place; the first `warmup` steps (allocator, cuDNN autotuning, compilation) are not timed."""
    if len(batches) <= warmup:
        raise ValueError(f"train_step_rate: {len(batches)} batches leave none to time after {warmup} warm-up steps")
    model = model.to(device, memory_format=fmt).train()
    criterion = build_criterion(Hyp.load().loss, model.head.kind, batches[0].images.shape[-1])
    optimizer = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    scaler = precision.grad_scaler()
    on_device = [b.to(device) for b in batches]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, warm = [], 0.0
    for i, batch in enumerate(on_device):
        synchronize(device)
        t0 = time.perf_counter()
        with precision.autocast(device):
            outputs = model((batch.images.float() / 255).contiguous(memory_format=fmt))
        loss, _ = criterion(outputs, batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        else:
            warm += time.perf_counter() - t0
    sec = statistics.median(times)
    return StepRate(len(batches[0]) / sec, sec, peak_memory_gib(device), warm)


def forward_latency_ms(model: nn.Module, batch_size: int, img_size: int, device: torch.device,
                       dtype: torch.dtype = torch.float32, fmt: torch.memory_format = torch.contiguous_format,
                       warmup: int = 1, runs: int = 3) -> float:
    """Median forward time per image (eval mode, inference_mode) in milliseconds, of a copy of
    `model` in `dtype` and `fmt` on zeros."""
    model = copy.deepcopy(model).eval().to(device=device, dtype=dtype, memory_format=fmt)
    x = torch.zeros(batch_size, 3, img_size, img_size, device=device, dtype=dtype).contiguous(memory_format=fmt)
    return time_forward_ms(model, x, warmup, runs)


def time_forward_ms(model: nn.Module, x: torch.Tensor, warmup: int = 1, runs: int = 3) -> float:
    """Median time per image of model(x), in milliseconds, as the model is (device, dtype, compiled)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            synchronize(x.device)
            t0 = time.perf_counter()
            model(x)
            synchronize(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / x.shape[0]


def loader_rate(loader, batches: int, memory: bool = False) -> tuple[float, int, int]:
    """(images/s over `batches` batches after the first, peak RSS summed over the process tree,
    peak PSS) of a loader, crossing epochs when the split is small (the workers persist). Worker
    start-up and the first batch are not counted. With memory=False the RSS is not polled (reading
    smaps stalls the workers) and both memory figures are 0. PSS is read over 4 batches after the
    timed ones: polling it every batch slowed a 2-worker loader by ~20%."""
    it = iter(loader)
    next(it)
    n, seen, rss, t0 = 0, 0, 0, time.perf_counter()
    while seen < batches:
        for batch in it:
            n += len(batch)
            seen += 1
            rss = max(rss, process_tree_rss()) if memory else 0
            if seen >= batches:
                break
        it = iter(loader)
    rate = n / (time.perf_counter() - t0)
    pss = 0
    if memory:
        for _, _ in zip(range(4), it):
            pss = max(pss, process_tree_rss(proportional=True))
    return rate, rss, pss
