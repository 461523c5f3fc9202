"""COCO JSON and YOLO txt labels -> a validated LabelIndex (see data/label_index.py)."""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from data.config import DataConfig, SplitSpec
from data.label_index import INDEX_VERSION, IndexBuilder, LabelIndex, Problem, check_instance, file_stamp
from data.splits import ImageList, cache_base, list_images
from utils.io import atomic_write_text
from utils.errors import ConfigError
from utils.paths import cache_path

LOG = logging.getLogger("gradpath.data")


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
    problems: list[Problem] = []
    seen = set()
    for ann in data["annotations"]:
        where = f"{path.name}: annotation id {ann.get('id')}"
        image_id = int(ann.get("image_id", -1))
        if image_id not in images:
            problems.append(Problem("bad_labels", where, f"unknown image_id {image_id}, skipped"))
            continue
        if ann.get("category_id") not in cat_to_idx:
            problems.append(Problem("bad_labels", where, f"unknown category_id {ann.get('category_id')}, skipped"))
            continue
        if ann.get("iscrowd", 0):  # crowd regions are for evaluation only
            problems.append(Problem("crowd", where, "crowd region, for evaluation only", warn=False))
            continue
        x, y, w, h = (float(v) for v in ann.get("bbox", [0, 0, 0, 0]))
        key = (image_id, ann["category_id"], round(x, 2), round(y, 2), round(w, 2), round(h, 2))
        if key in seen:
            problems.append(Problem("duplicates", where, "duplicate of an earlier annotation, skipped"))
            continue
        seen.add(key)
        im = images[image_id]
        seg = ann.get("segmentation")
        poly = join_polygons(seg) if isinstance(seg, list) else None
        if isinstance(seg, list) and any(len(part) < 6 for part in seg):
            problems.append(Problem("fixed", where, "polygon with fewer than 3 points dropped" +
                                    ("; the box outline is used as its mask" if poly is None else "")))
        ok = check_instance(np.array([x, y, x + w, y + h], np.float32), poly, (im["height"], im["width"]), problems,
                            where)
        if ok is not None:
            by_image[image_id].append((ok[0], cat_to_idx[ann["category_id"]], ok[1]))
    builder.findings.extend(problems)
    for image_id, im in images.items():
        builder.add_image(split.images / im["file_name"], image_id, (int(im["height"]), int(im["width"])),
                          by_image.get(image_id, []))
    return builder.build()


@dataclass
class LabelFile:
    """One image and its YOLO label file, validated: what the index keeps of it and what was wrong."""
    image: Path
    shape: tuple[int, int]               # (h, w); (0, 0) when the header cannot be read
    instances: list[tuple[np.ndarray, int, np.ndarray]]
    problems: list[Problem]


def check_label_file(image: Path, label: Path, nc: int) -> LabelFile:
    """Read and validate one label file against its image's size (no state: files may be checked
    in any order, or in parallel, and added to an IndexBuilder afterwards)."""
    try:
        shape = _image_size(image)
    except Exception:  # unreadable header: add_image counts it as missing or corrupt
        return LabelFile(image, (0, 0), [], [])
    if not label.is_file():
        missing = Problem("missing_labels", str(image), f"no label file {label}", warn=False)
        return LabelFile(image, shape, [], [missing])
    instances, problems, seen = [], [], set()
    for ln, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
        where = f"{label}:{ln}"
        key = tuple(line.split())
        if key and key in seen:
            problems.append(Problem("duplicates", where, "the same line as an earlier one, skipped"))
            continue
        seen.add(key)
        inst = _parse_yolo_line(line, nc, shape, problems, where)
        if inst is not None:
            instances.append(inst)
    return LabelFile(image, shape, instances, problems)


def read_yolo(listing: ImageList, nc: int) -> LabelIndex:
    """YOLO txt: `cls cx cy w h` or `cls x1 y1 x2 y2 ...` (normalised), one file per image."""
    builder = IndexBuilder()
    builder.findings.extend(listing.problems)
    for i, (img, label) in enumerate(zip(listing.images, listing.labels)):
        checked = check_label_file(img, label, nc)
        builder.findings.extend(checked.problems)
        builder.add_image(img, i, checked.shape, checked.instances)
    return builder.build()


def _image_size(path: Path) -> tuple[int, int]:
    """(h, w) as decoded with EXIF orientation applied (as cv2.imread does), from the header only."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # 90-degree rotations swap the sides


def _parse_yolo_line(line: str, nc: int, shape: tuple[int, int], problems: list[Problem], where: str):
    parts = line.split()
    if not parts:
        return None
    try:
        cls, vals = int(parts[0]), np.array([float(v) for v in parts[1:]], np.float32)
    except ValueError:
        problems.append(Problem("bad_labels", where, f"not numbers: {line[:80]!r}, skipped"))
        return None
    if not 0 <= cls < nc:
        problems.append(Problem("bad_labels", where, f"class {cls} out of range 0..{nc - 1}, skipped"))
        return None
    h, w = shape
    if len(vals) == 4:
        cx, cy, bw, bh = vals * [w, h, w, h]
        box, poly = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32), None
    elif len(vals) >= 6 and len(vals) % 2 == 0:
        poly = vals.reshape(-1, 2) * [w, h]
        box = np.concatenate([poly.min(0), poly.max(0)]).astype(np.float32)
    else:
        problems.append(Problem("bad_labels", where,
                                f"expected 4 box values or >= 3 polygon points, got {len(vals)} values, skipped"))
        return None
    ok = check_instance(box, poly, shape, problems, where)
    return None if ok is None else (ok[0], cls, ok[1])


def load_index(cfg: DataConfig, split: str) -> LabelIndex:
    """The split's label index, from its cache when every source file is unchanged."""
    spec = cfg.splits.get(split)
    if spec is None:
        raise ConfigError(f"{cfg.source}: no '{split}' split")
    base = cache_base(spec)
    cache = cache_path(base.with_name(f"{base.name}.index.npz"))
    if cfg.format == "coco":
        stamp, build = file_stamp([spec.annotations]), lambda: read_coco(spec, cfg.category_ids)
    else:
        listing = list_images(spec)
        stamp, build = yolo_stamp(listing, cfg.nc), lambda: read_yolo(listing, cfg.nc)
    index = LabelIndex.load(cache, stamp)
    if index is None:
        index = build()
        index.save(cache, stamp)
    LOG.info("%s %s: %s", cfg.name, split, index.summary())
    return index


def yolo_stamp(listing: ImageList, nc: int) -> list:
    """What a YOLO index depends on, as one digest: every image path, every label path with its
    size and mtime (an absent label file too), and the class count labels are checked against.
    Images are not stamped (as before): one damaged after indexing is met, and skipped, while loading."""
    h = hashlib.sha1()
    for img, label in zip(listing.images, listing.labels):
        try:
            st = label.stat()
            h.update(f"{img}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{img}\0{label}\0-\n".encode())
    return [INDEX_VERSION, nc, len(listing.images), h.hexdigest()]


def ground_truth_json(cfg: DataConfig, split: str, index: LabelIndex) -> Path:
    """The COCO ground truth a split is scored against: a COCO split's own JSON; for a YOLO split
    the JSON derived from its labels, cached beside them and rewritten when the index differs."""
    spec = cfg.splits[split]
    if cfg.format == "coco":
        return spec.annotations
    base = cache_base(spec)
    out = cache_path(base.with_name(f"{base.name}.coco.json"))
    digest = index_digest(index, cfg.names)
    try:
        with out.open() as f:
            if f'"gradpath_index": "{digest}"' in f.read(200):
                return out
    except OSError:
        pass
    return write_coco_json(index, cfg.names, out, digest)


def index_digest(index: LabelIndex, names: list[str]) -> str:
    """A digest of everything a derived COCO JSON holds."""
    h = hashlib.sha1(json.dumps(names).encode())
    for key in ("files", "image_ids", "shapes", "inst_offsets", "boxes", "classes", "seg_offsets", "points"):
        h.update(np.ascontiguousarray(getattr(index, key)).tobytes())
    return h.hexdigest()


def disk_cache_dir(cfg: DataConfig, split: str) -> Path:
    """Where --cache disk keeps the split's decoded images."""
    return cache_path(cache_base(cfg.splits[split]).parent / f".cache-{split}")


def write_coco_json(index: LabelIndex, names: list[str], out: Path, digest: str = "") -> Path:
    """A COCO ground-truth JSON for a YOLO-txt split, so both formats are scored the same way;
    `digest` (index_digest) leads the file, so a reader can tell it is current from its start."""
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
    info = {"gradpath_index": digest, "description": "derived from YOLO labels"}
    atomic_write_text(out, json.dumps({"info": info, "images": images, "annotations": anns, "categories": cats}))
    return out
