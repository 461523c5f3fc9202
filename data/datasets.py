"""COCO JSON and YOLO txt labels -> a validated LabelIndex (see data/label_index.py)."""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from data.config import DataConfig, SplitSpec
from data.label_index import IndexBuilder, LabelIndex, check_instance, file_stamp
from utils.io import atomic_write_text
from utils.errors import ConfigError
from utils.paths import cache_path

LOG = logging.getLogger("gradpath.data")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def join_polygons(polys: list[list[float]]) -> np.ndarray | None:
    """Several COCO polygons of one instance -> one ring (parts joined at their nearest points)."""
    parts = [np.asarray(p, np.float32).reshape(-1, 2) for p in polys if len(p) >= 6]
    if not parts:
        return None
    ring = parts[0]
    for part in parts[1:]:
        d = ((ring[:, None] - part[None]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        part = np.roll(part, -j, 0)
        ring = np.concatenate([ring[:i + 1], part, part[:1], ring[i:]])
    return ring


def read_coco(split: SplitSpec, category_ids: list[int]) -> LabelIndex:
    path = split.annotations
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read COCO JSON: {e}") from None
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ConfigError(f"{path}: '{key}' list missing")
    cat_to_idx = {cid: i for i, cid in enumerate(category_ids)}
    images = {}
    for im in data["images"]:
        images[int(im["id"])] = im
    by_image: dict[int, list] = defaultdict(list)
    builder = IndexBuilder()
    counts: Counter = builder.counts
    seen = set()
    for ann in data["annotations"]:
        where = f"{path.name}: annotation id {ann.get('id')}"
        image_id = int(ann.get("image_id", -1))
        if image_id not in images:
            counts["bad_labels"] += 1
            LOG.warning("%s: unknown image_id %s, skipped", where, image_id)
            continue
        if ann.get("category_id") not in cat_to_idx:
            counts["bad_labels"] += 1
            LOG.warning("%s: unknown category_id %s, skipped", where, ann.get("category_id"))
            continue
        if ann.get("iscrowd", 0):
            counts["crowd"] += 1  # crowd regions are for evaluation only
            continue
        x, y, w, h = (float(v) for v in ann.get("bbox", [0, 0, 0, 0]))
        key = (image_id, ann["category_id"], round(x, 2), round(y, 2), round(w, 2), round(h, 2))
        if key in seen:
            counts["duplicates"] += 1
            LOG.warning("%s: duplicate of an earlier annotation, skipped", where)
            continue
        seen.add(key)
        im = images[image_id]
        seg = ann.get("segmentation")
        poly = join_polygons(seg) if isinstance(seg, list) else None
        if isinstance(seg, list) and any(len(part) < 6 for part in seg):
            counts["fixed"] += 1
            LOG.warning("%s: polygon with fewer than 3 points dropped%s", where,
                        "; the box outline is used as its mask" if poly is None else "")
        ok = check_instance(np.array([x, y, x + w, y + h], np.float32), poly, (im["height"], im["width"]), counts, where)
        if ok is not None:
            by_image[image_id].append((ok[0], cat_to_idx[ann["category_id"]], ok[1]))
    for image_id, im in images.items():
        builder.add_image(split.images / im["file_name"], image_id, (int(im["height"]), int(im["width"])),
                          by_image.get(image_id, []))
    return builder.build()


def yolo_image_list(split: SplitSpec) -> list[Path]:
    if split.list_file:
        base = split.list_file.parent
        return [(base / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                for line in split.list_file.read_text().splitlines() if line.strip()]
    return sorted(p for p in split.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_yolo(split: SplitSpec, nc: int) -> LabelIndex:
    """YOLO txt: `cls cx cy w h` or `cls x1 y1 x2 y2 ...` (normalised), one file per image."""
    builder = IndexBuilder()
    for i, img in enumerate(yolo_image_list(split)):
        label = split.labels / (img.stem + ".txt")
        try:
            h0, w0 = _image_size(img)
        except Exception:  # unreadable header: add_image counts it as missing or corrupt
            builder.add_image(img, i, (0, 0), [])
            continue
        instances = []
        if not label.is_file():
            builder.counts["missing_labels"] += 1
        else:
            for ln, line in enumerate(label.read_text().splitlines(), 1):
                inst = _parse_yolo_line(line, nc, (h0, w0), builder.counts, f"{label}:{ln}")
                if inst is not None:
                    instances.append(inst)
        builder.add_image(img, i, (h0, w0), instances)
    return builder.build()


def _image_size(path: Path) -> tuple[int, int]:
    """(h, w) as decoded with EXIF orientation applied (as cv2.imread does), from the header only."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # 90-degree rotations swap the sides


def _parse_yolo_line(line: str, nc: int, shape: tuple[int, int], counts: Counter, where: str):
    parts = line.split()
    if not parts:
        return None
    try:
        cls, vals = int(parts[0]), np.array([float(v) for v in parts[1:]], np.float32)
    except ValueError:
        counts["bad_labels"] += 1
        LOG.warning("%s: not numbers: %r, skipped", where, line[:80])
        return None
    if not 0 <= cls < nc:
        counts["bad_labels"] += 1
        LOG.warning("%s: class %d out of range 0..%d, skipped", where, cls, nc - 1)
        return None
    h, w = shape
    if len(vals) == 4:
        cx, cy, bw, bh = vals * [w, h, w, h]
        box, poly = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32), None
    elif len(vals) >= 6 and len(vals) % 2 == 0:
        poly = vals.reshape(-1, 2) * [w, h]
        box = np.concatenate([poly.min(0), poly.max(0)]).astype(np.float32)
    else:
        counts["bad_labels"] += 1
        LOG.warning("%s: expected 4 box values or >= 3 polygon points, got %d values, skipped", where, len(vals))
        return None
    ok = check_instance(box, poly, shape, counts, where)
    return None if ok is None else (ok[0], cls, ok[1])


def load_index(cfg: DataConfig, split: str) -> LabelIndex:
    """The split's label index, from its cache when every source file is unchanged."""
    spec = cfg.splits.get(split)
    if spec is None:
        raise ConfigError(f"{cfg.source}: no '{split}' split")
    if cfg.format == "coco":
        sources, cache = [spec.annotations], cache_path(spec.annotations.with_suffix(".index.npz"))
    else:
        sources = [spec.labels] + ([spec.list_file] if spec.list_file else [])
        cache = cache_path(spec.labels.parent / f"{spec.labels.name}.index.npz")
    stamp = file_stamp(sources) + ([file_stamp(sorted(spec.labels.glob("*.txt")))] if spec.labels else [])
    index = LabelIndex.load(cache, stamp)
    if index is None:
        index = read_coco(spec, cfg.category_ids) if cfg.format == "coco" else read_yolo(spec, cfg.nc)
        index.save(cache, stamp)
    LOG.info("%s %s: %s", cfg.name, split, index.summary())
    return index


def write_coco_json(index: LabelIndex, names: list[str], out: Path) -> Path:
    """A COCO ground-truth JSON for a YOLO-txt split, so both formats are scored the same way."""
    images, anns = [], []
    for i in range(len(index)):
        h, w = (int(v) for v in index.shapes[i])
        images.append({"id": int(index.image_ids[i]), "file_name": Path(index.files[i]).name, "height": h, "width": w})
        boxes, classes, segs = index.instances(i)
        for b, c, s in zip(boxes, classes, segs):
            rle = mask_utils.frPyObjects([s.reshape(-1).tolist()], h, w)
            area = float(mask_utils.area(mask_utils.merge(rle)))
            anns.append({"id": len(anns) + 1, "image_id": int(index.image_ids[i]), "category_id": int(c),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "area": area, "iscrowd": 0, "segmentation": [s.reshape(-1).tolist()]})
    cats = [{"id": i, "name": n} for i, n in enumerate(names)]
    atomic_write_text(out, json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return out
