"""Dataset YAMLs in the forms users bring them, each resolved to one DataConfig: where every
split's images and labels are, the class names and the dataset's category ids.

- Ours: `train: {images: DIR, annotations: JSON}` (COCO), or `{images: DIR, labels: DIR, list: TXT}`
  with `format: yolo`.
- The YOLOv5 / YOLOv7 / Ultralytics / Roboflow forms: `train:` a folder of images, a list file of
  image paths, or a list of those; labels found from each image's path (data/splits.py);
  `names` a list or an index -> name mapping, `nc` optional and checked against it.

`path` (default: the YAML's folder) is the root relative entries are resolved against. A relative
`path` is looked up beside the YAML, then in the current folder, then in the repository. Without
`path`, an entry not found beside the YAML is looked up in the current folder too (YOLOv7's
`./coco/train2017.txt` is relative to where its users run). An entry `../x` that does not exist
is taken as `x` (Roboflow exports name `../train/images` from the folder that holds `train/`, as
the official loaders resolve it)."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.io import load_yaml
from utils.paths import REPO_ROOT, resolve_repo_path

LOG = logging.getLogger("gradpath.data")
KNOWN_KEYS = {"format", "path", "train", "val", "test", "names", "nc", "train_defaults"}
# keys other tools read that change nothing here: warned about, never an error
INERT_KEYS = {"download", "roboflow", "license", "author", "url", "description", "version", "date", "contributor",
              "minival", "channels", "yaml_file"}
SPLIT_KEYS = {"images", "annotations", "labels", "list"}
DEFAULT_KEYS = {"epochs", "batch_size", "img_size", "hyp"}


@dataclass
class SplitSpec:
    images: Path                 # image folder (COCO), the folder list/labels are relative to, or the root
    annotations: Path | None     # COCO instances JSON
    labels: Path | None = None   # YOLO txt folder (our mapping form)
    list_file: Path | None = None
    sources: tuple[Path, ...] = ()  # the YOLO forms: image folders, list files or images, in order


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


def _abs(path: Path) -> Path:
    """Absolute, `..` folded, symlinks kept (labels are looked for beside the path as named)."""
    return Path(os.path.normpath(os.path.abspath(path.expanduser())))


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def _mapping_split(src: str, root: Path, name: str, spec: dict, fmt: str) -> SplitSpec:
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
    if lst is not None and not lst.is_file():
        raise ConfigError(f"{src}: '{name}.list' file not found: {lst}")
    return SplitSpec(images, ann, labels, lst)


def _locate(src: str, roots: list[Path], key: str, entry: Any) -> Path:
    """One entry of a YOLO-form split: an existing folder, list file or image."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{src}: '{key}' entries must be paths (a folder of images or a list file), got {entry!r}")
    entry = entry.strip()
    for root in roots:
        for candidate in [entry, entry[3:]] if entry.startswith("../") else [entry]:
            path = _abs(root / candidate)
            if path.exists():
                return path
    looked = " or ".join(str(_abs(root / entry)) for root in roots)
    raise ConfigError(f"{src}: '{key}': {entry} not found (looked at {looked})")


def _split(src: str, roots: list[Path], key: str, value: Any, fmt: str) -> SplitSpec:
    root = roots[0]
    if isinstance(value, dict):
        return _mapping_split(src, root, key, value, fmt)
    if fmt == "coco":
        raise ConfigError(f"{src}: '{key}' must be a mapping with 'images' and 'annotations' under format: coco")
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise ConfigError(f"{src}: '{key}' is an empty list")
    return SplitSpec(root, None, sources=tuple(_locate(src, roots, key, e) for e in entries))


def _dataset_root(src: str, raw: dict) -> Path:
    here = _abs(resolve_repo_path(src)).parent
    value = raw.get("path")
    if value is None or str(value).strip() == "":
        return here
    p = Path(str(value)).expanduser()
    for candidate in [p] if p.is_absolute() else [here / p, Path.cwd() / p, REPO_ROOT / p]:
        if candidate.is_dir():
            return _abs(candidate)
    where = "" if p.is_absolute() else " (looked beside the YAML, in the current folder and in the repository)"
    raise ConfigError(f"{src}: 'path' folder not found: {value}{where}")


def _coco_categories(path: Path) -> tuple[list[str], list[int]]:
    try:
        cats = json.loads(path.read_text()).get("categories")
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read COCO JSON: {e}") from None
    if not cats:
        raise ConfigError(f"{path}: has no 'categories' list")
    cats = sorted(cats, key=lambda c: int(c["id"]))
    return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]


def _int_key(src: str, key: Any) -> int:
    if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit())):
        raise ConfigError(f"{src}: 'names' key {key!r} is not a class index (0, 1, 2, ...)")
    return int(key)


def _yolo_names(src: str, names: Any, nc: Any) -> list[str]:
    """`names` as a list or an index -> name mapping with indices 0..n-1; without it, nc names."""
    if names is None:
        if nc is None:
            raise ConfigError(f"{src}: needs 'names' (a list, or index: name) or at least 'nc'")
        return [f"class{i}" for i in range(_nc(src, nc))]
    if isinstance(names, dict):
        by_index = {_int_key(src, k): v for k, v in names.items()}
        bad = sorted(i for i in by_index if i >= len(by_index))
        if bad:
            raise ConfigError(f"{src}: 'names' index {bad[0]} is out of range: {len(by_index)} names take the "
                              f"indices 0..{len(by_index) - 1}")
        names = [by_index[i] for i in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{src}: 'names' must be a non-empty list (or index: name mapping)")
    for i, n in enumerate(names):
        if not isinstance(n, (str, int, float)) or isinstance(n, bool) or str(n).strip() == "":
            raise ConfigError(f"{src}: 'names' entry {i} must be a name, got {n!r}")
    return [str(n) for n in names]


def _nc(src: str, nc: Any) -> int:
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ConfigError(f"{src}: 'nc' must be a positive integer, got {nc!r}")
    return nc


def _check_keys(src: str, raw: dict) -> None:
    unknown = set(raw) - KNOWN_KEYS - INERT_KEYS
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {sorted(unknown)} (known: {sorted(KNOWN_KEYS)}; "
                          f"ignored: {sorted(INERT_KEYS)})")
    if raw.get("channels", 3) != 3:
        raise ConfigError(f"{src}: 'channels' is {raw['channels']!r}: only 3-channel (colour) images are supported")
    inert = sorted(set(raw) & INERT_KEYS)
    if inert:
        LOG.warning("%s: key(s) %s do nothing here, ignored", src, ", ".join(inert))


def _format(src: str, raw: dict) -> str:
    fmt = raw.get("format")
    if fmt is None:  # our COCO mapping form, unless a split is named the YOLO way
        splits = [raw[s] for s in ("train", "val", "test") if raw.get(s) is not None]
        return "coco" if all(isinstance(v, dict) and "labels" not in v for v in splits) else "yolo"
    if fmt not in ("coco", "yolo"):
        raise ConfigError(f"{src}: 'format' must be coco or yolo, got {fmt!r}")
    return fmt


def _train_defaults(src: str, raw: dict) -> dict:
    defaults = raw.get("train_defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - DEFAULT_KEYS or not all(
            isinstance(v, str) if k == "hyp" else (isinstance(v, int) and v > 0) for k, v in defaults.items()):
        raise ConfigError(f"{src}: 'train_defaults' takes positive integers for epochs, batch_size, img_size "
                          f"and a hyp YAML path")
    return dict(defaults)


def load_data_config(path: str | Path) -> DataConfig:
    raw = load_yaml(path, "dataset")
    src = str(path)
    _check_keys(src, raw)
    fmt = _format(src, raw)
    root = _dataset_root(src, raw)
    roots = [root] if raw.get("path") else list(dict.fromkeys([root, _abs(Path.cwd())]))
    splits = {s: _split(src, roots, s, raw[s], fmt) for s in ("train", "val", "test") if raw.get(s) is not None}
    if "train" not in splits and "val" not in splits:
        raise ConfigError(f"{src}: needs a 'train' or 'val' split")
    if fmt == "coco":
        names, ids = _coco_categories(next(iter(splits.values())).annotations)
    else:
        names = _yolo_names(src, raw.get("names"), raw.get("nc"))
        ids = list(range(len(names)))
    if raw.get("nc") is not None and _nc(src, raw["nc"]) != len(names):
        raise ConfigError(f"{src}: 'nc' is {raw['nc']} but there are {len(names)} names")
    return DataConfig(Path(src).stem, fmt, root, splits, names, ids, src, _train_defaults(src, raw))
