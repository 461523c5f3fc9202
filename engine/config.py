"""The run's configuration: train.py's options and the hyperparameters (kept light: --help imports nothing heavy)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.io import load_yaml
from utils.paths import REPO_ROOT, resolve_repo_path

DEFAULT_HYP = REPO_ROOT / "cfg" / "hyp" / "hyp.scratch-high.yaml"
LOG = logging.getLogger("gradpath.config")
# Keys of the official YOLOv5 / YOLOv7 hyp files that change nothing here: accepted, so those files
# load as they are, and named in one warning. iou_t: a threshold no loss reads; anchors: a count of
# anchors per level for AutoAnchor (anchors come from the model cfg or its weights); loss_ota,
# paste_in: YOLOv7's OTA assignment and paste-in augmentation, not implemented.
INERT_KEYS = ("iou_t", "anchors", "loss_ota", "paste_in")
# The official training scripts fix the warmup's minimum length in code, not in their hyp files:
# YOLOv5 (and the YOLOv7 u7 seg code built on it) 100 batches, YOLOv7's main train.py 1000. Every
# hyp file of YOLOv7 main (and only those) has loss_ota, so such a file gets YOLOv7's minimum
# unless it sets warmup_min_iters itself.
YOLOV7_WARMUP_MIN_ITERS = 1000




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


def load_hyp(path: str | Path | None = None) -> dict[str, Any]:
    """The default hyperparameters overridden by `path`; unknown keys and wrong types are errors.
    Official YOLOv5/YOLOv7 files load as they are: their keys without effect here (INERT_KEYS) are
    named in one warning and dropped; the keys they lack keep the defaults, but for the warmup
    minimum of YOLOv7's own files (YOLOV7_WARMUP_MIN_ITERS)."""
    hyp = load_yaml(DEFAULT_HYP, "hyperparameter")
    if path is None or resolve_repo_path(path).resolve() == DEFAULT_HYP.resolve():
        return hyp
    user = load_yaml(path, "hyperparameter")
    inert = [k for k in user if k in INERT_KEYS and k not in hyp]
    for key, value in user.items():
        if key in inert:
            continue
        if key not in hyp:
            raise ConfigError(f"{path}: unknown hyperparameter '{key}' (known: {', '.join(sorted(hyp))})")
        expected = hyp[key]
        if isinstance(expected, list):
            ok = isinstance(value, list) and len(value) == len(expected) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{path}: hyperparameter '{key}' must be "
                              f"{'a list of ' + str(len(expected)) + ' numbers' if isinstance(expected, list) else 'a number'}, "
                              f"got {value!r}")
        hyp[key] = value
    if inert:
        LOG.warning("%s: %s ignored: no effect in gradpath", path, ", ".join(inert))
    if "loss_ota" in user and "warmup_min_iters" not in user:
        hyp["warmup_min_iters"] = YOLOV7_WARMUP_MIN_ITERS
        LOG.info("%s: a YOLOv7 hyp file: warmup_min_iters %d, as YOLOv7's train.py", path, YOLOV7_WARMUP_MIN_ITERS)
    return hyp
