"""The options of train.py as one dataclass (kept light: --help imports nothing heavy)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainOptions:
    """Every train.py flag; saved with the run as config.yaml['args']."""

    weights: str = ""
    cfg: str = ""  # "" = the --weights checkpoint's own model, else DEFAULT_CFG
    data: str = "cfg/data/coco-mini.yaml"
    hyp: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    img_size: int | None = None
    rect: bool = False
    resume: str = ""
    nosave: bool = False
    noval: bool = False
    cache: str | None = None
    device: str = ""
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = "SGD"
    sync_bn: bool = False
    workers: int = 8
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    lr_schedule: str = "cosine"  # one of LR_SCHEDULES
    save_period: int = -1
    seed: int = 0
    close_mosaic: int | None = None
    amp: bool = True
    amp_dtype: str = "fp16"
    channels_last: bool = False
    compile: bool = False
    log_grads: int = 0
    patience: int = 0


LR_SCHEDULES = ("cosine", "linear", "linear-yolov5")
DEFAULT_CFG = "cfg/models/gp-n-seg.yaml"
# Training defaults where neither the data YAML (its `train_defaults:`) nor a flag sets a value.
FALLBACK = {"epochs": 300, "batch_size": 16, "img_size": 640, "hyp": "cfg/hyp/hyp.scratch-high.yaml"}


def saved_options(saved: dict) -> dict:
    """A run's saved args in today's fields (a resumed run may predate a rename): linear_lr became
    lr_schedule."""
    saved = dict(saved)
    if "linear_lr" in saved:
        linear = saved.pop("linear_lr")
        saved.setdefault("lr_schedule", "linear" if linear else "cosine")
    return saved
