"""A YOLO split's images and label files, found as the official loaders find them.

Images: every image under a folder (recursively, hidden names skipped), the lines of a list file
(a relative line is relative to the list file's folder, `./` or not), or one image file. Labels:
the image path with its last `images` folder replaced by `labels` and its suffix by `.txt`
(`coco/images/train2017/x.jpg` -> `coco/labels/train2017/x.txt`; no `images` folder: beside the
image), or `<labels folder>/<stem>.txt` in our mapping form (`labels:`)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from data.config import SplitSpec
from data.label_index import Problem
from utils.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class ImageList:
    images: list[Path]          # in the order the sources name them, each image once
    labels: list[Path]          # the label file of each image (it may not exist)
    problems: list[Problem]     # images named twice (used once)


def list_images(spec: SplitSpec) -> ImageList:
    """The split's images and their label files; a list file naming an image that does not exist,
    or a file that is no image, is a ConfigError naming the list file and line."""
    if spec.sources:
        found = [p for src in spec.sources for p in _source_images(src)]
    elif spec.list_file:
        found = _list_file_images(spec.list_file)
    else:
        found = _folder_images(spec.images)
    images, seen, problems = [], set(), []
    for p in found:
        if p in seen:
            problems.append(Problem("duplicates", str(p), "image named twice in the split, used once"))
            continue
        seen.add(p)
        images.append(p)
    return ImageList(images, [label_file(p, spec.labels) for p in images], problems)


def label_file(image: Path, labels_dir: Path | None = None) -> Path:
    """Where the YOLO label of `image` is: see the module docstring."""
    if labels_dir is not None:
        return labels_dir / f"{image.stem}.txt"
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):  # folders only, the last one first
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def cache_base(spec: SplitSpec) -> Path:
    """The path the split's caches are named after (`<base>.index.npz`, `<base>.coco.json`), beside
    its labels: the mapping form's labels folder, the labels folder of an image folder, a list
    file without its suffix; several sources add a digest of them all."""
    if spec.annotations is not None and not spec.sources:
        return spec.annotations.with_suffix("")
    if not spec.sources:
        return spec.labels if spec.labels is not None else spec.images
    first = spec.sources[0]
    if first.is_dir():
        labels = label_file(first / "x").parent
        base = labels if labels.is_dir() else first
    else:
        base = first.with_suffix("")
    if len(spec.sources) > 1:
        digest = hashlib.sha1("\n".join(map(str, spec.sources)).encode()).hexdigest()[:8]
        base = base.with_name(f"{base.name}-{digest}")
    return base


def _source_images(src: Path) -> list[Path]:
    if src.is_dir():
        return _folder_images(src)
    if src.suffix.lower() in IMAGE_SUFFIXES:
        return [src]
    return _list_file_images(src)


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top) / f for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _list_file_images(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{list_file}: cannot read this list of image paths: {e}") from None
    base, images = list_file.parent, []
    for ln, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry:
            continue
        path = Path(os.path.normpath(base / Path(entry).expanduser()))  # an absolute entry stays as it is
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"{list_file}:{ln}: {entry!r} is not an image path (suffixes: "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        if not path.is_file():
            raise ConfigError(f"{list_file}:{ln}: image not found: {entry}" +
                              (f" (looked at {path})" if str(path) != entry else ""))
        images.append(path)
    return images
