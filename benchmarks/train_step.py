#!/usr/bin/env python
"""Training-step throughput and peak memory: images/s for forward + loss + backward + step.

    python benchmarks/train_step.py                                 # small cfg, CPU, 640, batch 8
    python benchmarks/train_step.py --cfg cfg/models/yolor-elan-seg.yaml --batch-size 2 --steps 3
    python benchmarks/train_step.py --device 0 --amp fp16 --batch-size 16 32 64   # GPU with AMP

Batches are real: mosaic-augmented images and segment labels from the bundled mini COCO (drawn
with repetition, so a batch may be larger than the dataset). Peak memory is the CUDA
allocator's peak on GPU, the process's peak RSS on CPU. The median step after one warm-up step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.config import load_data_config  # noqa: E402
from engine.device import amp_precision, configure_cuda  # noqa: E402
from benchmarks.harness.speed import mosaic_batches, train_step_rate  # noqa: E402
from models.model import build_model  # noqa: E402
from utils.dist import select_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["cfg/models/gp-n-seg.yaml"])
    p.add_argument("--data", default="cfg/data/coco-mini.yaml")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, nargs="+", default=[8])
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="")
    p.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="mixed precision (CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=4, help="workers that build the mosaic batches")
    args = p.parse_args()
    device = select_device(args.device)
    configure_cuda(device, fixed_shapes=True)
    precision = amp_precision(device, args.amp is not None, args.amp or "fp16")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"device={device} amp={args.amp if precision.amp else None} img={args.img_size} "
          f"threads={torch.get_num_threads()} channels_last={args.channels_last}")
    print(f"{'cfg':<28}{'batch':>6}{'img/s':>10}{'s/step':>10}{'peak GiB':>10}")
    data = load_data_config(args.data)
    for cfg in args.cfg:
        for bs in args.batch_size:
            model = build_model(cfg, num_classes=80)
            batches = mosaic_batches(data, args.img_size, bs, args.steps + 1, int(max(model.stride)), args.workers)
            r = train_step_rate(model, batches, device, precision, fmt)
            print(f"{Path(cfg).stem:<28}{bs:>6}{r.images_per_s:>10.2f}{r.seconds_per_step:>10.3f}{r.peak_gib:>10.2f}")


if __name__ == "__main__":
    main()
