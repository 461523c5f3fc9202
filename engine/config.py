"""The run's configuration, resolved once: train.py's options, the typed hyperparameters and the
data YAML's defaults (defaults <- hyp YAML <- data YAML <- CLI flags), frozen, saved with the run
(config.yaml and every checkpoint) and read back as it was on --resume. Kept light: train.py
--help imports nothing heavy."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import ConfigError
from utils.io import load_yaml
from utils.paths import REPO_ROOT, resolve_repo_path

if TYPE_CHECKING:  # the shares' types; imported when used (Hyp._groups), so --help stays light
    from data.augment import AugmentParams
    from models.loss.losses import LossGains

LOG = logging.getLogger("gradpath.config")
DEFAULT_HYP = REPO_ROOT / "cfg" / "hyp" / "hyp.scratch-high.yaml"
DEFAULT_CFG = "cfg/models/gp-n-seg.yaml"
LR_SCHEDULES = ("cosine", "linear", "linear-yolov5")
# Training defaults where neither the data YAML (its `train_defaults:`) nor a flag sets a value.
FALLBACK = {"epochs": 300, "batch_size": 16, "img_size": 640, "hyp": "cfg/hyp/hyp.scratch-high.yaml"}
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


@dataclass(frozen=True)
class TrainOptions:
    """Every train.py flag; saved with the run as config.yaml['args']."""

    weights: str = ""
    cfg: str = ""  # "" = the --weights checkpoint's own model, else DEFAULT_CFG
    data: str = "cfg/data/coco-mini.yaml"
    hyp: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    img_size: int | None = None
    val_img_size: int | None = None  # None: img_size (YOLOv7's --img TRAIN TEST sets it)
    rect: bool = False
    resume: str = ""
    nosave: bool = False
    noval: bool = False
    notest: bool = False  # validate only after the last epoch
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
    noplots: bool = False
    label_smoothing: float | None = None  # None: the hyp file's
    freeze: tuple[int, ...] | str = ()  # (N,): the first N layers; (i, j, ...): those; "backbone"
    class_carryover: bool = True  # keep the --weights head's rows of the class names the data shares

    def __post_init__(self):
        if isinstance(self.freeze, list):  # read back from a saved run
            object.__setattr__(self, "freeze", tuple(self.freeze))

    def replace(self, **changes: Any) -> "TrainOptions":
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """The rules between options (each flag's own range is checked where it is parsed)."""
        never = "--noval" if self.noval else "--notest" if self.notest else ""
        if self.patience and never:
            raise ConfigError(f"--patience {self.patience} with {never}: patience counts epochs without a better "
                              f"validation score, and {never} validates {'none' if self.noval else 'only the last'}; "
                              f"drop one of them")

    def as_dict(self) -> dict[str, Any]:
        """Plain types, as config.yaml and a checkpoint hold them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def saved_options(saved: dict) -> dict:
    """A run's saved args in today's fields (a resumed run may predate a rename): linear_lr became
    lr_schedule; fields no longer known are dropped."""
    saved = dict(saved)
    if "linear_lr" in saved:
        linear = saved.pop("linear_lr")
        saved.setdefault("lr_schedule", "linear" if linear else "cosine")
    known = {f.name for f in fields(TrainOptions)}
    return {k: v for k, v in saved.items() if k in known}


# (low, high, closed at high) for each hyperparameter; None: unbounded on that side
_UNIT = (0.0, 1.0, True)
HYP_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "lr0": (0.0, None, False), "lrf": (0.0, 1.0, True), "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, None, False), "warmup_epochs": (0.0, None, False), "warmup_momentum": _UNIT,
    "warmup_bias_lr": (0.0, None, False), "warmup_min_iters": (0, None, False), "nominal_batch": (1, None, False),
    "box": (0.0, None, False), "cls": (0.0, None, False), "obj": (0.0, None, False), "cls_pw": (0.0, None, False),
    "obj_pw": (0.0, None, False), "anchor_t": (1.0, None, False), "obj_balance": (0.0, None, False),
    "fl_gamma": (0.0, None, False), "label_smoothing": (0.0, 1.0, False), "box_af": (0.0, None, False),
    "cls_af": (0.0, None, False), "dfl": (0.0, None, False), "tal_topk": (1, None, False),
    "tal_alpha": (0.0, None, False), "tal_beta": (0.0, None, False), "seg": (0.0, None, False),
    "hsv_h": _UNIT, "hsv_s": _UNIT, "hsv_v": _UNIT, "degrees": (0.0, 180.0, True), "translate": (0.0, 1.0, False),
    "scale": (0.0, 1.0, False), "shear": (0.0, 90.0, False), "perspective": (0.0, 0.01, True), "flipud": _UNIT,
    "fliplr": _UNIT, "mosaic": _UNIT, "mixup": _UNIT, "copy_paste": _UNIT, "albumentations": (0.0, 100.0, True),
    "close_mosaic": (0, None, False),
}


@dataclass(frozen=True)
class Hyp:
    """The hyperparameters, typed: the optimizer's and the schedule's here, the loss's as
    `loss` (models.loss.losses.LossGains), the training augmentation's as `aug`
    (data.augment.AugmentParams). Flat, in that order, they are the keys of
    cfg/hyp/hyp.scratch-high.yaml, which holds the default values (no dataclass holds any, so
    they live in one place); files, checkpoints and `replace` use the flat keys."""

    lr0: float
    lrf: float
    momentum: float
    weight_decay: float  # per nominal batch: the optimizer scales it to the real one (effective_weight_decay)
    warmup_epochs: float
    warmup_momentum: float
    warmup_bias_lr: float
    warmup_min_iters: int
    nominal_batch: int
    loss: LossGains
    aug: AugmentParams
    close_mosaic: int

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Hyp":
        """The defaults overridden by the YAML at `path`; unknown keys, wrong types and values out
        of range are one-line errors naming the file and key. Official YOLOv5/YOLOv7 files load as
        they are: their keys without effect here (INERT_KEYS) are named in one warning; the keys
        they lack keep the defaults, but for the warmup minimum of YOLOv7's own files."""
        values = load_yaml(DEFAULT_HYP, "hyperparameter")
        if path is not None and resolve_repo_path(path).resolve() != DEFAULT_HYP.resolve():
            user = load_yaml(path, "hyperparameter")
            inert = [k for k in user if k in INERT_KEYS]
            unknown = [k for k in user if k not in values and k not in INERT_KEYS]
            if unknown:
                raise ConfigError(f"{path}: unknown hyperparameter '{unknown[0]}' (known: {', '.join(sorted(values))})")
            values.update({k: v for k, v in user.items() if k not in inert})
            if inert:
                LOG.warning("%s: %s ignored: no effect in gradpath", path, ", ".join(inert))
            if "loss_ota" in user and "warmup_min_iters" not in user:
                values["warmup_min_iters"] = YOLOV7_WARMUP_MIN_ITERS
                LOG.info("%s: a YOLOv7 hyp file: warmup_min_iters %d, as YOLOv7's train.py", path,
                         YOLOV7_WARMUP_MIN_ITERS)
        return cls.from_dict(values, str(path or DEFAULT_HYP))

    @staticmethod
    def _groups() -> dict[str, type]:
        """The field holding each share, and its type (imported here: --help stays light)."""
        from data.augment import AugmentParams
        from models.loss.losses import LossGains

        return {"loss": LossGains, "aug": AugmentParams}

    @classmethod
    def keys(cls) -> list[str]:
        """The flat keys, in file order."""
        groups = cls._groups()
        return [g.name for f in fields(cls) for g in (fields(groups[f.name]) if f.name in groups else [f])]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "hyp") -> "Hyp":
        """Every key from the flat `values`, type- and range-checked (a saved run's hyp reads back here)."""
        keys = cls.keys()
        missing = [k for k in keys if k not in values]
        if missing:
            raise ConfigError(f"{source}: hyperparameter '{missing[0]}' missing")
        unknown = [k for k in values if k not in keys]
        if unknown:
            raise ConfigError(f"{source}: unknown hyperparameter '{unknown[0]}' (known: {', '.join(sorted(keys))})")
        check = lambda of: {f.name: _checked(source, f.name, values[f.name], f.type) for f in fields(of)}  # noqa: E731
        groups = cls._groups()
        own = {f.name: _checked(source, f.name, values[f.name], f.type) for f in fields(cls) if f.name not in groups}
        return cls(**own, **{name: group(**check(group)) for name, group in groups.items()})

    def replace(self, **changes: Any) -> "Hyp":
        """A copy with some flat keys changed (checked as a file's would be)."""
        return Hyp.from_dict({**self.as_dict(), **changes}, "hyp")

    def as_dict(self) -> dict[str, Any]:
        """The flat keys in file order, plain types (lists, not tuples), as a YAML file or a checkpoint holds them."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            flat.update(asdict(value) if dataclasses.is_dataclass(value) else {f.name: value})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def _checked(source: str, key: str, value: Any, annotation: str) -> Any:
    """`value` as the field's type, inside HYP_RANGES[key]; else a ConfigError naming source and key."""
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if annotation.startswith("tuple"):
        if not (isinstance(value, (list, tuple)) and value and all(is_number(v) for v in value)):
            raise ConfigError(f"{source}: hyperparameter '{key}' must be a list of numbers, got {value!r}")
        out: Any = tuple(float(v) for v in value)
        items = out
    elif annotation == "int":
        if not (is_number(value) and float(value).is_integer()):
            raise ConfigError(f"{source}: hyperparameter '{key}' must be a whole number, got {value!r}")
        out = int(value)
        items = (out,)
    else:
        if not is_number(value):
            raise ConfigError(f"{source}: hyperparameter '{key}' must be a number, got {value!r}")
        out = float(value)
        items = (out,)
    low, high, closed = HYP_RANGES[key]
    for v in items:
        if (low is not None and v < low) or (high is not None and (v > high or (v == high and not closed))):
            span = f"[{low}, {high}{']' if closed else ')'}" if high is not None else f">= {low}"
            raise ConfigError(f"{source}: hyperparameter '{key}' must be in {span}, got {value!r}")
    return out


@dataclass(frozen=True)
class RunConfig:
    """One training run's whole configuration: the options with every default filled in, and the
    hyperparameters. `to_dict()` is what config.yaml and every checkpoint hold; `from_saved` reads
    it back unchanged, whatever the files at the old paths now say."""

    options: TrainOptions
    hyp: Hyp

    @property
    def accumulate(self) -> int:
        """Batches summed per optimizer step: the nominal batch over the real one."""
        return max(round(self.hyp.nominal_batch / self.options.batch_size), 1)

    @property
    def effective_weight_decay(self) -> float:
        """The hyp's weight decay (per nominal batch) scaled to the images of one optimizer step."""
        return self.hyp.weight_decay * self.options.batch_size * self.accumulate / self.hyp.nominal_batch

    def to_dict(self) -> dict[str, Any]:
        return {"args": self.options.as_dict(), "hyp": self.hyp.as_dict()}

    @classmethod
    def resolve(cls, opt: TrainOptions, train_defaults: dict[str, Any] | None = None) -> "RunConfig":
        """Fill the options the CLI left unset from the data YAML's train_defaults, else FALLBACK;
        load the hyp file; apply --close-mosaic and --label-smoothing."""
        defaults = {**FALLBACK, **(train_defaults or {})}
        opt = opt.replace(**{k: defaults[k] for k in FALLBACK if getattr(opt, k) is None})
        hyp = Hyp.load(opt.hyp)
        flags = {k: getattr(opt, k) for k in ("close_mosaic", "label_smoothing") if getattr(opt, k) is not None}
        return cls(opt, hyp.replace(**flags) if flags else hyp)

    @classmethod
    def from_saved(cls, saved: dict[str, Any], source: str, version: int) -> "RunConfig":
        """A checkpoint's config back as it was. Format-1 checkpoints saved the hyp after setup had
        scaled its weight decay in place: that scaling is undone here, so it is not applied twice."""
        if not saved.get("args") or not saved.get("hyp"):
            raise ConfigError(f"{source}: has no saved training arguments to resume from")
        opt = TrainOptions(**saved_options(saved["args"]))
        values = {k: v for k, v in saved["hyp"].items() if k not in INERT_KEYS}
        hyp = Hyp.from_dict(values, f"{source}: saved hyp")
        config = cls(opt, hyp)
        if version < 2:
            scaled_by = opt.batch_size * config.accumulate / hyp.nominal_batch
            config = cls(opt, hyp.replace(weight_decay=hyp.weight_decay / scaled_by))
        return config

