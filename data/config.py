"""Dataset YAMLs: where the images and labels are, the class names and the dataset's category ids."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.coco_categories import read_categories
from utils.errors import ConfigError
from utils.io import load_yaml
from utils.paths import REPO_ROOT

KNOWN_KEYS = {"format", "path", "train", "val", "test", "names", "nc", "train_defaults", "download"}
SPLIT_KEYS = {"images", "annotations", "labels", "list"}
DEFAULT_KEYS = {"epochs", "batch_size", "img_size", "hyp"}


@dataclass
class SplitSpec:
    images: Path                 # image folder (COCO) or the root that list/labels are relative to
    annotations: Path | None     # COCO instances JSON
    labels: Path | None = None   # YOLO txt folder
    list_file: Path | None = None


@dataclass
class DataConfig:
    name: str
    format: str
    root: Path
    splits: dict[str, SplitSpec]
    names: list[str]
    category_ids: list[int]
    source: str = ""
    train_defaults: dict[str, int] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def _split(src: str, root: Path, name: str, spec: Any, fmt: str) -> SplitSpec:
    if not isinstance(spec, dict):
        raise ConfigError(f"{src}: '{name}' must be a mapping with 'images' and "
                          f"{'annotations' if fmt == 'coco' else 'labels'}")
    unknown = set(spec) - SPLIT_KEYS
    if unknown:
        raise ConfigError(f"{src}: '{name}' has unknown key(s) {sorted(unknown)} (known: {sorted(SPLIT_KEYS)})")
    images = _resolve(root, str(spec.get("images", "")))
    if not images.is_dir():
        raise ConfigError(f"{src}: '{name}.images' folder not found: {images}")
    ann = _resolve(root, spec["annotations"]) if spec.get("annotations") else None
    if fmt == "coco" and (ann is None or not ann.is_file()):
        raise ConfigError(f"{src}: '{name}.annotations' COCO JSON not found: {ann}")
    labels = _resolve(root, spec["labels"]) if spec.get("labels") else None
    if fmt == "yolo" and (labels is None or not labels.is_dir()):
        raise ConfigError(f"{src}: '{name}.labels' folder not found: {labels}")
    lst = _resolve(root, spec["list"]) if spec.get("list") else None
    return SplitSpec(images, ann, labels, lst)


def _coco_categories(path: Path) -> tuple[list[str], list[int]]:
    try:
        cats = read_categories(path)  # the list alone, not the whole file
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read COCO JSON: {e}") from None
    if not cats:
        raise ConfigError(f"{path}: has no 'categories' list")
    cats = sorted(cats, key=lambda c: int(c["id"]))
    return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]


def load_data_config(path: str | Path) -> DataConfig:
    raw = load_yaml(path, "dataset")
    src = str(path)
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {sorted(unknown)} (known: {sorted(KNOWN_KEYS)})")
    fmt = raw.get("format", "coco")
    if fmt not in ("coco", "yolo"):
        raise ConfigError(f"{src}: 'format' must be coco or yolo, got {fmt!r}")
    root_value = str(raw.get("path", "."))
    root = Path(root_value)
    if not root.is_absolute():
        here = Path(path).resolve().parent
        root = (REPO_ROOT / root) if (REPO_ROOT / root).exists() else (here / root)
    if not root.is_dir():
        raise ConfigError(f"{src}: 'path' folder not found: {root_value} (resolved to {root})")
    splits = {s: _split(src, root, s, raw[s], fmt) for s in ("train", "val", "test") if raw.get(s) is not None}
    if "train" not in splits and "val" not in splits:
        raise ConfigError(f"{src}: needs a 'train' or 'val' split")
    if fmt == "coco":
        first = next(iter(splits.values())).annotations
        names, ids = _coco_categories(first)
    else:
        names = raw.get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{src}: 'names' must be a non-empty list (or index: name mapping)")
        ids = list(range(len(names)))
    if "nc" in raw and raw["nc"] != len(names):
        raise ConfigError(f"{src}: 'nc' is {raw['nc']} but there are {len(names)} names")
    defaults = raw.get("train_defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - DEFAULT_KEYS or not all(
            isinstance(v, str) if k == "hyp" else (isinstance(v, int) and v > 0) for k, v in defaults.items()):
        raise ConfigError(f"{src}: 'train_defaults' takes positive integers for epochs, batch_size, img_size "
                          f"and a hyp YAML path")
    return DataConfig(Path(src).stem, fmt, root, splits, list(names), ids, src, dict(defaults))
