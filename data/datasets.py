"""COCO JSON and YOLO txt labels -> a validated LabelIndex (see data/label_index.py), built once
per node and cached.

COCO JSON: one json.load, then every field of every annotation gathered into arrays in one pass
and checked vectorised. YOLO txt: the files are read by a pool of processes (parsing is Python,
so threads would queue on the GIL), in chunks, and checked vectorised. Under torchrun local rank
0 builds and caches the index while the node's other ranks wait, then they load it."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import socket
import stat
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from data.config import DataConfig, SplitSpec
from data.label_index import (ARRAYS, LabelIndex, RawInstances, assemble, check_instances, folder_stamp,
                              image_problems, source_stamp, stream_problem)
from utils.dist import DistInfo, dist_info_from_env, from_local_leader
from utils.io import atomic_write_text
from utils.errors import ConfigError
from utils.paths import cache_path

LOG = logging.getLogger("gradpath.data")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
POOL_MIN_FILES = 2000  # YOLO splits this large are read by a process pool


def join_polygons(polys: list[list[float]]) -> np.ndarray | None:
    """Several COCO polygons of one instance -> one ring (parts joined at their nearest points)."""
    parts = [np.array(p, np.float32).reshape(-1, 2) for p in polys if len(p) >= 6]
    if not parts:
        return None
    ring = parts[0]
    for part in parts[1:]:
        d = ((ring[:, None] - part[None]) ** 2).sum(-1)
        i, j = divmod(int(d.argmin()), d.shape[1])
        ring = np.concatenate([ring[:i + 1], part[j:], part[:j + 1], ring[i:]])  # out to the part, round it, back
    return ring


# ---- COCO JSON ---------------------------------------------------------------------------------
@dataclass
class ImageTable:
    ids: np.ndarray       # (n,) int64
    names: list[str]      # file_name of each
    shapes: np.ndarray    # (n,2) int64 (h, w)


def read_coco(split: SplitSpec, category_ids: list[int]) -> LabelIndex:
    path = split.annotations
    table, raw, ann_ids, counts = _coco_arrays(path, category_ids)  # the parsed JSON is gone on return
    files = [split.images / name for name in table.names]
    checked = check_instances(raw, table.shapes, counts, lambda j: f"{path.name}: annotation id {ann_ids[j]}")
    return assemble(files, table.ids, table.shapes, image_problems(files), checked, counts)


def _coco_arrays(path: Path, category_ids: list[int]) -> tuple[ImageTable, RawInstances, list, Counter]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read COCO JSON: {e}") from None
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ConfigError(f"{path}: '{key}' list missing")
    table = _image_table(data["images"], path)
    counts: Counter = Counter()
    raw, ann_ids = _coco_instances(data["annotations"], table, category_ids, path, counts)
    return table, raw, ann_ids, counts


def _image_table(images: list[dict], path: Path) -> ImageTable:
    by_id = {}
    try:
        for im in images:
            by_id[int(im["id"])] = im  # a repeated id: the last record wins, in the first one's place
        names = [im["file_name"] for im in by_id.values()]
        shapes = np.array([(int(im["height"]), int(im["width"])) for im in by_id.values()], np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: an image record lacks a usable id, file_name, height or width: "
                          f"{type(e).__name__}: {e}") from None
    return ImageTable(np.fromiter(by_id, np.int64, len(by_id)), names, shapes.reshape(-1, 2))


def _coco_instances(anns: list[dict], table: ImageTable, category_ids: list[int], path: Path,
                    counts: Counter) -> tuple[RawInstances, list]:
    """The annotations that name a known image and category, are not crowd regions and not
    duplicates, as raw instances (and their annotation ids, for warnings)."""
    where = lambda i: f"{path.name}: annotation id {anns[i].get('id')}"  # noqa: E731
    row = _image_rows(np.array([int(a.get("image_id", -1)) for a in anns], np.int64), table.ids)
    cat_to_idx = {cid: i for i, cid in enumerate(category_ids)}
    cat = np.array([cat_to_idx.get(a.get("category_id"), -1) for a in anns], np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    for i in np.flatnonzero(row < 0):
        LOG.warning("%s: unknown image_id %s, skipped", where(i), anns[i].get("image_id"))
    for i in np.flatnonzero((row >= 0) & (cat < 0)):
        LOG.warning("%s: unknown category_id %s, skipped", where(i), anns[i].get("category_id"))
    counts["bad_labels"] += int(((row < 0) | (cat < 0)).sum())
    counts["crowd"] += int(((row >= 0) & (cat >= 0) & crowd).sum())  # crowd regions are for evaluation only
    sel = np.flatnonzero((row >= 0) & (cat >= 0) & ~crowd)
    bbox = _coco_boxes([anns[i].get("bbox", (0, 0, 0, 0)) for i in sel])
    first = np.zeros(len(sel), bool)
    if len(sel):
        key = np.column_stack([row[sel], cat[sel], np.round(bbox, 2)])
        first[np.unique(key, axis=0, return_index=True)[1]] = True
    for k in np.flatnonzero(~first):
        LOG.warning("%s: duplicate of an earlier annotation, skipped", where(sel[k]))
    counts["duplicates"] += int((~first).sum())
    sel, bbox = sel[first], bbox[first]
    seg_lens, points = _coco_polygons([anns[i].get("segmentation") for i in sel], lambda k: where(sel[k]), counts)
    xyxy = np.column_stack([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]]).astype(np.float32)
    raw = RawInstances(row[sel], xyxy.reshape(-1, 4), cat[sel], seg_lens, points)
    return raw, [anns[i].get("id") for i in sel]


def _image_rows(image_ids: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
    """The image table row of each id, -1 for an id the table does not have."""
    if len(table_ids) == 0:
        return np.full(len(image_ids), -1, np.int64)
    order = np.argsort(table_ids, kind="stable")
    pos = np.clip(np.searchsorted(table_ids, image_ids, sorter=order), 0, len(order) - 1)
    rows = order[pos]
    return np.where(table_ids[rows] == image_ids, rows, -1)


def _coco_boxes(boxes: list) -> np.ndarray:
    """(m,4) float64 [x, y, w, h]; a record that is not four numbers becomes NaN (a non-finite box)."""
    try:
        out = np.array(boxes, np.float64)
        if out.shape == (len(boxes), 4):
            return out
    except (TypeError, ValueError):
        pass
    out = np.full((len(boxes), 4), np.nan)
    for k, b in enumerate(boxes):
        try:
            out[k] = [float(v) for v in b]
        except (TypeError, ValueError):
            pass
    return out


def _coco_polygons(segs: list, where, counts: Counter) -> tuple[np.ndarray, np.ndarray]:
    """(seg_lens (m,), points (P,2) float32): one usable polygon as it is, several joined into one
    ring, none (RLE, or only short parts) as zero points (the box outline comes later)."""
    lens = np.zeros(len(segs), np.int64)
    flat: list = []
    for k, seg in enumerate(segs):
        if not isinstance(seg, list):
            continue
        if len(seg) == 1 and len(seg[0]) >= 6 and len(seg[0]) % 2 == 0:  # the common case: no numpy
            lens[k] = len(seg[0]) // 2
            flat.append(seg[0])
            continue
        usable = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        ring = join_polygons(usable)
        if len(usable) < len(seg):
            counts["fixed"] += 1
            LOG.warning("%s: polygon with fewer than 3 points (or an odd number of coordinates) dropped%s", where(k),
                        "; the box outline is used as its mask" if ring is None else "")
        if ring is not None:
            lens[k] = len(ring)
            flat.append(ring.ravel().tolist())
    n = int(lens.sum()) * 2
    return lens, np.fromiter(itertools.chain.from_iterable(flat), np.float32, n).reshape(-1, 2)


# ---- YOLO txt ----------------------------------------------------------------------------------
def yolo_image_list(split: SplitSpec) -> list[Path]:
    if split.list_file:
        base = split.list_file.parent
        return [(base / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                for line in split.list_file.read_text().splitlines() if line.strip()]
    return sorted(p for p in split.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class YoloPart:
    """What a run of YOLO label files holds, before checking (instances' img relative to the run)."""
    shapes: np.ndarray     # (k,2) int64 (h, w); (0, 0) where the image header is unreadable
    problems: list         # image_problem of each image
    raw: RawInstances
    lines: np.ndarray      # (m,) int64 line number of each instance in its file
    counts: Counter
    messages: list[str]    # warnings, logged by the caller (a pool's processes have no log handlers)


def read_yolo(split: SplitSpec, nc: int, workers: int | None = None) -> LabelIndex:
    """YOLO txt: `cls cx cy w h` or `cls x1 y1 x2 y2 ...` (normalised), one file per image."""
    files = yolo_image_list(split)
    labels = [split.labels / (img.stem + ".txt") for img in files]
    parts = _read_yolo_parts(files, labels, nc, workers)
    counts: Counter = Counter()
    raws, lines, shapes, problems, start = [], [], [], [], 0
    for part in parts:
        for m in part.messages:
            LOG.warning("%s", m)
        counts.update(part.counts)
        part.raw.img += start
        raws.append(part.raw)
        lines.append(part.lines)
        shapes.append(part.shapes)
        problems += part.problems
        start += len(part.problems)
    raw, line = RawInstances.concat(raws), np.concatenate(lines) if lines else np.zeros(0, np.int64)
    shape = np.concatenate(shapes) if shapes else np.zeros((0, 2), np.int64)
    checked = check_instances(raw, shape, counts, lambda j: f"{labels[raw.img[j]]}:{line[j]}")
    return assemble(files, np.arange(len(files)), shape, problems, checked, counts)


def _read_yolo_parts(files: list[Path], labels: list[Path], nc: int, workers: int | None) -> list[YoloPart]:
    """The files in runs, on a pool of processes when there are many: forked, as the DataLoader's
    workers are, so that nothing is imported again."""
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers <= 1 or len(files) < POOL_MIN_FILES:
        return [read_yolo_files(files, labels, nc)]
    step = -(-len(files) // (workers * 4))
    runs = [(files[a:a + step], labels[a:a + step]) for a in range(0, len(files), step)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(read_yolo_files, *zip(*runs), [nc] * len(runs)))


def read_yolo_files(files: list[Path], labels: list[Path], nc: int) -> YoloPart:
    """One run of image and label files: sizes, image problems and the parsed label lines."""
    counts: Counter = Counter()
    messages: list[str] = []
    shapes, problems = [], []
    img, boxes, classes, lens, pts, lines = [], [], [], [], [], []
    for k, (image, label) in enumerate(zip(files, labels)):
        (h0, w0), problem = probe_image(image)
        shapes.append((h0, w0))
        problems.append(problem)
        if h0 <= 0:  # unreadable header: assemble() counts it as missing or corrupt
            continue
        if not label.is_file():
            counts["missing_labels"] += 1
            continue
        for ln, line in enumerate(label.read_text().splitlines(), 1):
            inst = _parse_yolo_line(line, nc, (h0, w0), counts, f"{label}:{ln}", messages)
            if inst is not None:
                img.append(k)
                boxes.append(inst[0])
                classes.append(inst[1])
                lens.append(0 if inst[2] is None else len(inst[2]))
                if inst[2] is not None:
                    pts.append(inst[2])
                lines.append(ln)
    raw = RawInstances(np.array(img, np.int64), np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64),
                       np.array(lens, np.int64),
                       np.concatenate(pts).astype(np.float32) if pts else np.zeros((0, 2), np.float32))
    shapes_arr = np.array(shapes, np.int64).reshape(-1, 2)
    return YoloPart(shapes_arr, problems, raw, np.array(lines, np.int64), counts, messages)


def probe_image(path: Path) -> tuple[tuple[int, int], str | None]:
    """((h, w) from the header, (0, 0) if unreadable; image_problem), opening the file once."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return (0, 0), "missing"
        if st.st_size == 0:
            return (0, 0), "corrupt"
        with open(path, "rb") as f:
            problem = stream_problem(f, st.st_size)
            f.seek(0)
            try:
                return _image_size(f), problem
            except Exception:  # any header PIL cannot read
                return (0, 0), problem
    except OSError:
        return (0, 0), "missing"


def _image_size(f) -> tuple[int, int]:
    """(h, w) as decoded with EXIF orientation applied (as cv2.imread does), from the header only."""
    from PIL import Image

    with Image.open(f) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # 90-degree rotations swap the sides


def _parse_yolo_line(line: str, nc: int, shape: tuple[int, int], counts: Counter, where: str, messages: list[str]):
    """(box float32 xyxy pixels, class, polygon float32 (k,2) pixels or None), or None (counted)."""
    parts = line.split()
    if not parts:
        return None
    try:
        cls, vals = int(parts[0]), np.array([float(v) for v in parts[1:]], np.float32)
    except ValueError:
        counts["bad_labels"] += 1
        messages.append(f"{where}: not numbers: {line[:80]!r}, skipped")
        return None
    if not 0 <= cls < nc:
        counts["bad_labels"] += 1
        messages.append(f"{where}: class {cls} out of range 0..{nc - 1}, skipped")
        return None
    h, w = shape
    if len(vals) == 4:
        cx, cy, bw, bh = vals * [w, h, w, h]
        return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32), cls, None
    if len(vals) >= 6 and len(vals) % 2 == 0:
        poly = vals.reshape(-1, 2) * [w, h]
        return np.concatenate([poly.min(0), poly.max(0)]).astype(np.float32), cls, poly.astype(np.float32)
    counts["bad_labels"] += 1
    messages.append(f"{where}: expected 4 box values or >= 3 polygon points, got {len(vals)} values, skipped")
    return None


# ---- the cached index, once per node -----------------------------------------------------------
def index_cache(cfg: DataConfig, spec: SplitSpec) -> tuple[Path, str]:
    """(cache file, stamp of the sources it was built from)."""
    if cfg.format == "coco":
        return cache_path(spec.annotations.with_suffix(".index.npz")), source_stamp([spec.annotations])
    cache = cache_path(spec.labels.parent / f"{spec.labels.name}.index.npz")
    sources = [spec.labels] + ([spec.list_file] if spec.list_file else [])
    return cache, source_stamp(sources) + folder_stamp(spec.labels)


def load_index(cfg: DataConfig, split: str, info: DistInfo | None = None) -> LabelIndex:
    """The split's label index, from its cache when every source file is unchanged; else built
    by local rank 0 (under torchrun) while the node's other ranks wait, then loaded by them."""
    spec = cfg.splits.get(split)
    if spec is None:
        raise ConfigError(f"{cfg.source}: no '{split}' split")
    cache, stamp = index_cache(cfg, spec)
    index = LabelIndex.load(cache, stamp)
    if index is None:
        index = _build_once_per_node(cfg, spec, split, cache, stamp, info or dist_info_from_env())
    LOG.info("%s %s: %s", cfg.name, split, index.summary())
    return index


def _build_once_per_node(cfg: DataConfig, spec: SplitSpec, split: str, cache: Path, stamp: str,
                         info: DistInfo) -> LabelIndex:
    built: list[LabelIndex] = []

    def build_and_save() -> str:
        built.append(build_index(cfg, spec, split, info))
        return "saved" if built[0].save(cache, stamp) else "unsaved"

    status = from_local_leader(info, f"label-index/{cache}/{stamp}",
                               f"build the label index of {cfg.name} {split} ({cache})", build_and_save)
    if built:
        return built[0]
    index = LabelIndex.load(cache, stamp) if status == "saved" else None
    if index is not None:
        LOG.info("rank %d: label index of %s %s loaded, as local rank 0 (pid %s) built it", info.rank, cfg.name,
                 split, index.built_by.get("pid"))
        return index
    LOG.warning("rank %d: local rank 0 left no label index of %s %s to load; building it here", info.rank,
                cfg.name, split)
    return build_index(cfg, spec, split, info)


def build_index(cfg: DataConfig, spec: SplitSpec, split: str, info: DistInfo = DistInfo()) -> LabelIndex:
    t0 = time.perf_counter()
    LOG.info("%s %s: building the label index", cfg.name, split)
    index = read_coco(spec, cfg.category_ids) if cfg.format == "coco" else read_yolo(spec, cfg.nc)
    seconds = time.perf_counter() - t0
    index.built_by = {"pid": os.getpid(), "rank": info.rank, "local_rank": info.local_rank,
                      "host": socket.gethostname(), "seconds": round(seconds, 2)}
    LOG.info("%s %s: label index built in %.1f s", cfg.name, split, seconds)
    return index


def write_coco_json(index: LabelIndex, names: list[str], out: Path) -> Path:
    """A COCO ground-truth JSON for a YOLO-txt split, so both formats are scored the same way;
    kept while the index and names it was written from are unchanged (their digest beside it)."""
    digest = out.with_name(out.name + ".digest")
    key = index_digest(index, names)
    if out.is_file() and digest.is_file() and digest.read_text() == key:
        return out
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
    atomic_write_text(digest, key)
    return out


def index_digest(index: LabelIndex, names: list[str]) -> str:
    h = hashlib.sha1(json.dumps(names).encode())
    for k in ARRAYS:
        h.update(np.ascontiguousarray(getattr(index, k)).tobytes())
    return h.hexdigest()
