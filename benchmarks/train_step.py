#!/usr/bin/env python
"""Training-step throughput and peak memory: images/s for forward + loss + backward + step.

    python benchmarks/train_step.py                                 # small cfg, CPU, 640, batch 8
    python benchmarks/train_step.py --cfg cfg/models/yolor-elan-seg.yaml --batch-size 2 --steps 3
    python benchmarks/train_step.py --device 0 --amp --batch-size 16 32   # GPU with AMP

Batches are real: mosaic-augmented images and segment labels from the bundled mini COCO.
Peak memory is the CUDA allocator's peak on GPU, the process's peak RSS on CPU.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.config import load_data_config  # noqa: E402
from data.loader import build_dataloader  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from models.losses import build_criterion  # noqa: E402
from models.model import build_model  # noqa: E402
from utils.config import load_hyp  # noqa: E402
from utils.dist import select_device  # noqa: E402


def batches(data: str, img_size: int, batch_size: int, n: int, stride: int):
    loader, _ = build_dataloader(load_data_config(data), "train", img_size, batch_size, load_hyp(),
                                 augment=True, shuffle=True, workers=0, stride=stride)
    out = []
    while len(out) < n:
        for b in loader:
            if len(b) == batch_size:
                out.append(b)
            if len(out) == n:
                break
    return out


def bench(cfg: str, data: str, img_size: int, batch_size: int, steps: int, device: torch.device, amp: bool) -> dict:
    hyp = load_hyp()
    model = build_model(cfg, num_classes=80).to(device).train()
    criterion = build_criterion(hyp, model.head.kind, img_size)
    opt = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    data_batches = batches(data, img_size, batch_size, steps + 1, int(max(model.stride)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i, batch in enumerate(data_batches):
        batch = batch.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, enabled=amp):
            out = model(batch.images.float() / 255)
        loss, _ = criterion(out, batch)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"cfg": Path(cfg).stem, "batch": batch_size, "img/s": batch_size / sec, "s/step": sec, "peak GiB": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["cfg/models/gp-n-seg.yaml"])
    p.add_argument("--data", default="cfg/data/coco-mini.yaml")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, nargs="+", default=[8])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    args = p.parse_args()
    device = select_device(args.device)
    amp = args.amp and device.type == "cuda"
    print(f"device={device} amp={amp} img={args.img_size} threads={torch.get_num_threads()}")
    print(f"{'cfg':<28}{'batch':>6}{'img/s':>10}{'s/step':>10}{'peak GiB':>10}")
    for cfg in args.cfg:
        for bs in args.batch_size:
            r = bench(cfg, args.data, args.img_size, bs, args.steps, device, amp)
            print(f"{r['cfg']:<28}{r['batch']:>6}{r['img/s']:>10.2f}{r['s/step']:>10.3f}{r['peak GiB']:>10.2f}")


if __name__ == "__main__":
    main()
