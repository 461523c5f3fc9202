#!/usr/bin/env python
"""Inference latency of every model cfg, fused, printed as a table (ms per image).

    python benchmarks/inference.py                                   # all cfgs, CPU, 640, batch 1 and 32
    python benchmarks/inference.py --cfgs cfg/models/yolor-elan-seg.yaml --batch-sizes 1 --runs 3
    python benchmarks/inference.py --device 0 --half                 # GPU, FP16

The model forward only (fused Conv+BN and RepConv, eval mode, channels_last, inference_mode), on
zeros at the given size: what a deployed network costs before NMS and mask decoding. Each point
is the median of --runs timed runs after --warmup untimed ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.speed import forward_latency_ms  # noqa: E402
from models.model import build_model  # noqa: E402
from utils.dist import select_device  # noqa: E402


def latency_ms(cfg: str, img_size: int, batch_size: int, device: torch.device, half: bool, warmup: int,
               runs: int) -> float:
    """Median forward time per image in milliseconds (fused, channels_last)."""
    model = build_model(cfg, num_classes=80).fuse()
    return forward_latency_ms(model, batch_size, img_size, device, torch.float16 if half else torch.float32,
                              torch.channels_last, warmup, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfgs", nargs="+", default=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cfg/models").glob("*.yaml")))
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    ap.add_argument("--half", action="store_true", help="FP16 (CUDA only)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    device = select_device(args.device)
    if args.half and device.type != "cuda":
        ap.error("--half needs a CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {where}, {'FP16' if args.half else 'FP32'}, {args.img_size}x{args.img_size}, fused, "
          f"median of {args.runs} runs, ms per image")
    cols = [f"batch {b}" for b in args.batch_sizes]
    print(f"| cfg | GFLOPs | params | {' | '.join(cols)} |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    for cfg in args.cfgs:
        info = build_model(cfg, num_classes=80).info(args.img_size)
        cells = [f"{latency_ms(cfg, args.img_size, b, device, args.half, args.warmup, args.runs):.1f}"
                 for b in args.batch_sizes]
        print(f"| {Path(cfg).stem} | {info['gflops']:.1f} | {info['params'] / 1e6:.1f}M | {' | '.join(cells)} |",
              flush=True)


if __name__ == "__main__":
    main()
