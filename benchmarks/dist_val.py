#!/usr/bin/env python
"""Validation time under torch.distributed (CPU, gloo): one epoch's validation with 1 and with N
ranks, each predicting its part of every one-process batch and rank 0 scoring them all, and what
the other ranks' copy of the EMA costs: one broadcast of rank 0's weights per validation against
an EMA update after every optimizer step on every rank.

    python benchmarks/dist_val.py                          # yolov5n.pt on coco128 at 640, 1 and 2 ranks
    python benchmarks/dist_val.py --img-size 320 --ranks 1 2 --steps-per-epoch 7393   # full COCO at b16

Each rank gets cores // ranks threads. Times: wall seconds on rank 0 from the barrier before the
validation to its EvalResult (prediction, gathering, scoring), and the slowest rank's prediction.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_speed import prepare_data  # noqa: E402
from utils.dist import DistInfo, broadcast_module  # noqa: E402

SHARED = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data")).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out) -> None:
    from data.config import load_data_config
    from data.loader import build_dataloader
    from engine.checkpoint import load_model
    from engine.eval.evaluator import evaluate, predict_loader
    from engine.train.ema import ModelEMA

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    info = DistInfo(rank, rank, world)
    try:
        loader, dataset = build_dataloader(load_data_config(args.data), "val", args.img_size, args.batch_size // world,
                                           rect=True, workers=args.workers, rank=rank, world_size=world, stride=32,
                                           pin_memory=False)
        model, _ = load_model(args.weights)
        ema = ModelEMA(model)
        broadcast_s = _timed(lambda: broadcast_module(ema.ema, info), 5)
        ema_s = _timed(lambda: ema.update(model), 20)
        tdist.barrier()
        t0 = time.perf_counter()
        predict_loader(model, loader, torch.device("cpu"), 0.001, 0.65, 300, False, False, dataset.category_ids,
                       progress=rank == 0)
        predict_s = [None] * world
        tdist.all_gather_object(predict_s, time.perf_counter() - t0)
        tdist.barrier()
        t0 = time.perf_counter()
        result = evaluate(model, loader, dataset, torch.device("cpu"), dist=info)
        if result is not None:
            out.update(val_s=time.perf_counter() - t0, predict_s=max(predict_s), broadcast_s=broadcast_s,
                       ema_s=ema_s, images=result.n_images, ap=result.box["AP"])
    finally:
        tdist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHARED / "official/yolov5n.pt"))
    p.add_argument("--data", default=None, help="a dataset YAML with a val split (default: a copy of coco128 "
                   "under --out, whose label index is cached beside it)")
    p.add_argument("--out", type=Path, default=Path("runs/dist-val"))
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32, help="the one-process validation batch (per rank: / ranks)")
    p.add_argument("--workers", type=int, default=0, help="loader workers per rank")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps-per-epoch", type=int, default=8, help="optimizer steps an epoch (EMA updates per rank)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.data = args.data or str(prepare_data(args.out.resolve()))
    print(f"{args.weights} on {args.data} at {args.img_size}, one-process batch {args.batch_size}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'ranks':>5}{'images':>8}{'box AP':>8}{'val s':>8}{'predict s':>11}{'broadcast ms':>14}"
          f"{'EMA/epoch ms':>14}")
    for world in args.ranks:
        out = mp.Manager().dict()
        mp.spawn(_rank, args=(world, _free_port(), args, out), nprocs=world, join=True)
        print(f"{world:>5}{out['images']:>8}{out['ap']:>8.4f}{out['val_s']:>8.1f}{out['predict_s']:>11.1f}"
              f"{out['broadcast_s'] * 1e3:>14.1f}{out['ema_s'] * args.steps_per_epoch * 1e3:>14.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
