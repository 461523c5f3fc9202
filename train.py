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
from utils.cli_args import (ArgumentParser, Freeze, add_img_size, at_least, batch_size, device, freeze_item,
                            number_in, save_period)


def build_parser() -> ArgumentParser:
    """train.py's command line (tests read its options from here)."""
    d = TrainOptions()
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=d.weights, help="initial weights: a gradpath or official YOLOv5/YOLOv7 checkpoint (matching layers are loaded)")
    p.add_argument("--cfg", default=d.cfg, help="model cfg YAML (cfg/models/*.yaml; default: the --weights model, else gp-n-seg)")
    p.add_argument("--data", default=d.data, help="dataset YAML (cfg/data/*.yaml, or a YOLOv5/YOLOv7/Ultralytics/Roboflow one)")
    p.add_argument("--hyp", default=None, help="hyperparameter YAML (default: the data YAML's train_defaults, else cfg/hyp/hyp.scratch-high.yaml)")
    p.add_argument("--epochs", type=at_least(1), default=None,
                   help="epochs (default: the data YAML's train_defaults, else 300); with --resume, more than the "
                        "run's to extend it")
    p.add_argument("--batch-size", "--batch", type=batch_size, default=None, help="total batch size over all GPUs (default: data YAML, else 16)")
    add_img_size(p, second="val_img_size",
                 help="training size in pixels, optionally then the validation size (YOLOv7's --img 640 640); "
                      "default: data YAML, else 640")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--resume", nargs="?", const="True", default="", help="resume the newest run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="no validation (final evaluation skipped too)")
    p.add_argument("--notest", action="store_true", help="validate only after the last epoch (YOLOv7)")
    p.add_argument("--cache", nargs="?", const="ram", choices=["ram", "disk"], default=None, help="cache decoded images in ram or on disk")
    p.add_argument("--cache-images", dest="cache", action="store_const", const="ram", help="--cache ram (YOLOv7)")
    p.add_argument("--device", type=device, default=d.device, help="cpu, 0, or 0,1,2,3 (default: first CUDA device, else cpu)")
    p.add_argument("--multi-scale", action="store_true", help="vary the image size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train all classes as one")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default=d.optimizer,
                   help="SGD (Nesterov), Adam (weight decay as an L2 term, as YOLOv7's --adam) or AdamW")
    p.add_argument("--adam", dest="optimizer", action="store_const", const="Adam", help="--optimizer Adam (YOLOv7)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--workers", type=at_least(0), default=d.workers, help="dataloader workers per rank")
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of making expN")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="cosine (YOLOv7's default, YOLOv5 --cos-lr); linear (YOLOv7 --linear-lr: lrf at the last "
                        "epoch); linear-yolov5 (YOLOv5's default: lrf one epoch past the last)")
    p.add_argument("--linear-lr", dest="lr_schedule", action="store_const", const="linear", help="--lr-schedule linear")
    p.add_argument("--cos-lr", dest="lr_schedule", action="store_const", const="cosine", help="--lr-schedule cosine")
    p.add_argument("--label-smoothing", type=number_in(0.0, 1.0, high_open=True), default=None,
                   help="label smoothing epsilon (default: the hyp file's label_smoothing)")
    p.add_argument("--freeze", nargs="+", type=freeze_item, action=Freeze, default=d.freeze, metavar="N",
                   help="freeze layers: N (the first N, as YOLOv5/YOLOv7), several indices (0 1 2), or backbone; "
                        "no gradient, no weight decay, BatchNorm statistics kept")
    p.add_argument("--no-class-carryover", dest="class_carryover", action="store_false",
                   help="start every class row of the --weights head afresh (default: the rows of the class names "
                        "the checkpoint shares with --data are kept)")
    p.add_argument("--save-period", "--save_period", type=save_period, default=d.save_period,
                   help="also save epochN.pt every N epochs (-1: never)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--close-mosaic", type=at_least(0), default=None, help="epochs at the end without mosaic (default: hyp close_mosaic)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    p.add_argument("--amp", dest="amp_dtype", choices=["fp16", "bf16"], default=d.amp_dtype,
                   help="mixed precision dtype on CUDA (bf16: no loss scaling; Ampere and newer)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU: see gpu_check)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (first steps slower)")
    p.add_argument("--log-grads", type=at_least(0), default=0, metavar="N", help="log per-stage gradient norms every N steps")
    p.add_argument("--patience", type=at_least(0), default=0, help="stop after N epochs without improvement (0: never)")
    p.add_argument("--noplots", action="store_true", help="no label or training-batch plots")
    p.add_argument("--local-rank", "--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # torch.distributed.launch
    _official_extras(p)
    return p


def _official_extras(p: ArgumentParser) -> None:
    """YOLOv5's and YOLOv7's train.py flags that do nothing here, or that we cannot honour."""
    p.add_ignored("--image-weights", instead="every image is drawn once per epoch")
    p.add_ignored("--quad", instead="batches are collated at the training size (no 4-image quad batches)")
    p.add_ignored("--noautoanchor", instead="no AutoAnchor: anchors come from the model cfg or the --weights checkpoint")
    p.add_ignored("--v5-metric", instead="AP is COCO's 101-point interpolation (pycocotools / faster-coco-eval)")
    p.add_ignored("--bucket", instead="no cloud storage sync: the run stays in --project/--name", nargs=1)
    wandb = "no Weights & Biases logging: metrics go to results.csv and TensorBoard in the run folder"
    p.add_ignored("--entity", instead=wandb, nargs=1)
    p.add_ignored("--upload_dataset", instead=wandb, nargs="?")
    p.add_ignored("--bbox_interval", instead=wandb, nargs=1)
    p.add_ignored("--artifact_alias", instead=wandb, nargs=1)
    p.add_ignored("--no-overlap", instead="masks are always trained per instance (what --no-overlap asks for)")
    p.add_ignored("--mask-ratio", instead="masks are trained at 1/4 of the input size (the official default)", nargs=1)
    evolve = "hyperparameter evolution is not available here: run a sweep of --hyp files instead"
    p.add_refused("--evolve", reason=evolve, nargs="?")
    p.add_refused("--evolve_population", reason=evolve, nargs=1)
    p.add_refused("--resume_evolve", reason=evolve, nargs=1)


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
