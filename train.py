#!/usr/bin/env python
"""Train a gradpath detector / instance-segmentation model.

    python train.py                                  # small model on the bundled mini COCO, CPU ok
    python train.py --cfg cfg/models/yolor-elan-seg.yaml --data cfg/data/coco.yaml --batch-size 32
    torchrun --nproc_per_node 8 train.py --data cfg/data/coco.yaml --sync-bn
    python train.py --resume                         # newest runs/train/*/weights/last.pt
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from engine.config import LR_SCHEDULES, TrainOptions


def build_parser() -> argparse.ArgumentParser:
    """train.py's command line (tests read its options from here)."""
    d = TrainOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=d.weights, help="initial weights: a gradpath or official YOLOv5/YOLOv7 checkpoint (matching layers are loaded)")
    p.add_argument("--cfg", default=d.cfg, help="model cfg YAML (cfg/models/*.yaml; default: the --weights model, else gp-n-seg)")
    p.add_argument("--data", default=d.data, help="dataset YAML (cfg/data/*.yaml)")
    p.add_argument("--hyp", default=None, help="hyperparameter YAML (default: the data YAML's train_defaults, else cfg/hyp/hyp.scratch-high.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the data YAML's train_defaults, else 300)")
    p.add_argument("--batch-size", type=int, default=None, help="total batch size over all GPUs (default: data YAML, else 16)")
    p.add_argument("--img-size", "--img", "--imgsz", type=int, default=None, help="train/val image size in pixels (default: data YAML, else 640)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--resume", nargs="?", const="True", default="", help="resume the newest run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="no validation (final evaluation skipped too)")
    p.add_argument("--cache", nargs="?", const="ram", choices=["ram", "disk"], default=None, help="cache decoded images in ram or on disk")
    p.add_argument("--device", default=d.device, help="cpu, 0, or 0,1,2,3 (default: first CUDA device, else cpu)")
    p.add_argument("--multi-scale", action="store_true", help="vary the image size +/- 50%% per batch")
    p.add_argument("--single-cls", action="store_true", help="train all classes as one")
    p.add_argument("--optimizer", choices=["SGD", "AdamW"], default=d.optimizer)
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--workers", type=int, default=d.workers, help="dataloader workers per rank")
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of making expN")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="cosine (YOLOv7's default, YOLOv5 --cos-lr); linear (YOLOv7 --linear-lr: lrf at the last "
                        "epoch); linear-yolov5 (YOLOv5's default: lrf one epoch past the last)")
    p.add_argument("--linear-lr", dest="lr_schedule", action="store_const", const="linear", help="--lr-schedule linear")
    p.add_argument("--save-period", type=int, default=d.save_period, help="also save epochN.pt every N epochs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--close-mosaic", type=int, default=None, help="epochs at the end without mosaic (default: hyp close_mosaic)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    p.add_argument("--amp", dest="amp_dtype", choices=["fp16", "bf16"], default=d.amp_dtype,
                   help="mixed precision dtype on CUDA (bf16: no loss scaling; Ampere and newer)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU: see gpu_check)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (first steps slower)")
    p.add_argument("--log-grads", type=int, default=0, metavar="N", help="log per-stage gradient norms every N steps")
    p.add_argument("--patience", type=int, default=0, help="stop after N epochs without improvement (0: never)")
    p.add_argument("--noplots", action="store_true", help="no label or training-batch plots")
    p.add_argument("--local-rank", "--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # torch.distributed.launch
    return p


def parse_args(argv: list[str] | None = None) -> TrainOptions:
    ns = vars(build_parser().parse_args(argv))
    return TrainOptions(**{f.name: ns[f.name] for f in fields(TrainOptions)})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    from engine.device import OutOfMemory
    from engine.train.build import train
    from models.parser import CfgError
    from utils.errors import CheckpointError, ConfigError, error_line

    try:
        train(opt)
    except (ConfigError, CfgError, CheckpointError, OSError, ValueError, FloatingPointError, OutOfMemory) as e:
        print(f"train.py: error: {error_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
