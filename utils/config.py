"""YAML loading with clear errors, hyperparameter validation, and the one saved run config."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

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


class ConfigError(ValueError):
    """A bad config value; the message names the file and the field."""


def error_line(e: BaseException) -> str:
    """The message of `e` as one line. An error raised in a DataLoader worker comes back with the
    worker's whole traceback as its message; its last line is the original error."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return str(e)
    head, sep, rest = lines[-1].partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == type(e).__name__ else lines[-1]


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    p = resolve_repo_path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


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


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    from utils.checkpoint import atomic_write_text  # local import: keeps config import light

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
