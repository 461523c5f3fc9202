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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from data.config import DataConfig, SplitSpec
from data.label_index import (ARRAYS, INDEX_VERSION, Findings, LabelIndex, Problem, RawInstances, assemble,
                              check_instances, file_stamp, image_problems, stream_problem)
from data.splits import ImageList, cache_base, list_images
from utils.io import atomic_write_text
from utils.errors import ConfigError
from utils.paths import cache_path

LOG = logging.getLogger("gradpath.data")
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
    table, raw, ann_ids, keyed = _coco_arrays(path, category_ids)  # the parsed JSON is gone on return
    files = [split.images / name for name in table.names]
    checked, found = check_instances(raw, table.shapes, lambda j: f"{path.name}: annotation id {ann_ids[j]}",
                                     raw.keys)
    findings = Findings()
    findings.extend_in_order(keyed + found)
    return assemble(files, table.ids, table.shapes, image_problems(files), checked, findings)


def _coco_arrays(path: Path, category_ids: list[int]) -> tuple[ImageTable, RawInstances, np.ndarray, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read COCO JSON: {e}") from None
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ConfigError(f"{path}: '{key}' list missing")
    table = _image_table(data["images"], path)
    raw, ann_ids, keyed = _coco_instances(data["annotations"], table, category_ids, path)
    return table, raw, ann_ids, keyed


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


def _coco_instances(anns: list[dict], table: ImageTable, category_ids: list[int],
                    path: Path) -> tuple[RawInstances, np.ndarray, list[tuple[int, Problem]]]:
    """The annotations that name a known image and category, are not crowd regions and not
    duplicates, as raw instances (keyed by their place in the JSON), their annotation ids (for
    messages) and what was wrong with the others, keyed the same way."""
    where = lambda i: f"{path.name}: annotation id {anns[i].get('id')}"  # noqa: E731
    image_ids = np.array([int(a.get("image_id", -1)) for a in anns], np.int64)
    row = _image_rows(image_ids, table.ids)
    cat_to_idx = {cid: i for i, cid in enumerate(category_ids)}
    cat = np.array([cat_to_idx.get(a.get("category_id"), -1) for a in anns], np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    keyed = [(i, Problem("bad_labels", where(i), f"unknown image_id {image_ids[i]}, skipped"))
             for i in np.flatnonzero(row < 0)]
    keyed += [(i, Problem("bad_labels", where(i), f"unknown category_id {anns[i].get('category_id')}, skipped"))
              for i in np.flatnonzero((row >= 0) & (cat < 0))]
    keyed += [(i, Problem("crowd", where(i), "crowd region, for evaluation only", warn=False))  # evaluation only
              for i in np.flatnonzero((row >= 0) & (cat >= 0) & crowd)]
    sel = np.flatnonzero((row >= 0) & (cat >= 0) & ~crowd)
    bbox = _coco_boxes([anns[i].get("bbox", (0, 0, 0, 0)) for i in sel])
    first = np.zeros(len(sel), bool)
    if len(sel):
        key = np.column_stack([row[sel], cat[sel], np.round(bbox, 2)])
        first[np.unique(key, axis=0, return_index=True)[1]] = True
    keyed += [(sel[k], Problem("duplicates", where(sel[k]), "duplicate of an earlier annotation, skipped"))
              for k in np.flatnonzero(~first)]
    sel, bbox = sel[first], bbox[first]
    seg_lens, points, short = _coco_polygons([anns[i].get("segmentation") for i in sel])
    keyed += [(sel[k], Problem("fixed", where(sel[k]), "polygon with fewer than 3 points dropped" +
                               ("; the box outline is used as its mask" if not seg_lens[k] else "")))
              for k in short]
    xyxy = np.column_stack([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]]).astype(np.float32)
    raw = RawInstances(row[sel], xyxy.reshape(-1, 4), cat[sel], seg_lens, points, sel.astype(np.int64))
    return raw, _annotation_ids(anns, sel), keyed


def _annotation_ids(anns: list[dict], sel: np.ndarray) -> np.ndarray:
    """The ids of the selected annotations, copied out of the parsed JSON (for messages). A list of
    the JSON's own int objects would pin the parser's memory after the JSON is dropped: they lie
    scattered over every arena of the parse, and an arena goes back to the system only when empty."""
    try:
        return np.fromiter((int(anns[i]["id"]) for i in sel), np.int64, len(sel))
    except (KeyError, TypeError, ValueError):  # ids that are not integers: named as the JSON has them
        return np.array([str(anns[i].get("id")) for i in sel], dtype=str)


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


def _coco_polygons(segs: list) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(seg_lens (m,), points (P,2) float32, the positions whose polygon lost short parts): one
    usable polygon as it is, several joined into one ring, none (RLE, or only short parts) as zero
    points (the box outline comes later). A part with an odd number of coordinates counts as short."""
    lens = np.zeros(len(segs), np.int64)
    flat: list = []
    short: list[int] = []
    for k, seg in enumerate(segs):
        if not isinstance(seg, list):
            continue
        if len(seg) == 1 and len(seg[0]) >= 6 and len(seg[0]) % 2 == 0:  # the common case: no numpy
            lens[k] = len(seg[0]) // 2
            flat.append(seg[0])
            continue
        usable = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        if len(usable) < len(seg):
            short.append(k)
        ring = join_polygons(usable)
        if ring is not None:
            lens[k] = len(ring)
            flat.append(ring.ravel().tolist())
    n = int(lens.sum()) * 2
    return lens, np.fromiter(itertools.chain.from_iterable(flat), np.float32, n).reshape(-1, 2), short


# ---- YOLO txt ----------------------------------------------------------------------------------
@dataclass
class YoloPart:
    """What a run of YOLO label files holds, before checking (instances' img relative to the run)."""
    shapes: np.ndarray     # (k,2) int64 (h, w); (0, 0) where the image header is unreadable
    problems: list         # image_problem of each image
    raw: RawInstances      # keys: (image position in the run) << 32 | line number
    found: list            # (key, Problem) of the lines (the caller adds them to its Findings)


def read_yolo(listing: ImageList, nc: int, workers: int | None = None) -> LabelIndex:
    """YOLO txt: `cls cx cy w h` or `cls x1 y1 x2 y2 ...` (normalised), one file per image."""
    files, labels = listing.images, listing.labels
    parts = _read_yolo_parts(files, labels, nc, workers)
    raws, shapes, problems, keyed, start = [], [], [], [], 0
    for part in parts:
        part.raw.img += start
        part.raw.keys += start << 32
        raws.append(part.raw)
        shapes.append(part.shapes)
        problems += part.problems
        keyed += [(key + (start << 32), p) for key, p in part.found]
        start += len(part.problems)
    raw = RawInstances.concat(raws)
    shape = np.concatenate(shapes) if shapes else np.zeros((0, 2), np.int64)
    checked, found = check_instances(raw, shape, lambda j: f"{labels[raw.img[j]]}:{raw.keys[j] & 0xFFFFFFFF}",
                                     raw.keys)
    findings = Findings()
    findings.extend(listing.problems)
    findings.extend_in_order(keyed + found)
    return assemble(files, np.arange(len(files)), shape, problems, checked, findings)


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
    """One run of image and label files: sizes, image problems and the parsed label lines (no
    state: runs may be read in any order, or in parallel)."""
    found: list[tuple[int, Problem]] = []
    shapes, problems = [], []
    img, boxes, classes, lens, pts, keys = [], [], [], [], [], []
    for k, (image, label) in enumerate(zip(files, labels)):
        (h0, w0), problem = probe_image(image)
        shapes.append((h0, w0))
        problems.append(problem)
        if h0 <= 0:  # unreadable header: assemble() counts it as missing or corrupt
            continue
        if not label.is_file():
            found.append((k << 32, Problem("missing_labels", str(image), f"no label file {label}", warn=False)))
            continue
        seen = set()
        for ln, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
            where, dup = f"{label}:{ln}", tuple(line.split())
            if dup and dup in seen:
                found.append(((k << 32) | ln, Problem("duplicates", where, "the same line as an earlier one, skipped")))
                continue
            seen.add(dup)
            inst = _parse_yolo_line(line, nc, (h0, w0), where)
            if isinstance(inst, Problem):
                found.append(((k << 32) | ln, inst))
            elif inst is not None:
                img.append(k)
                boxes.append(inst[0])
                classes.append(inst[1])
                lens.append(0 if inst[2] is None else len(inst[2]))
                if inst[2] is not None:
                    pts.append(inst[2])
                keys.append((k << 32) | ln)
    raw = RawInstances(np.array(img, np.int64), np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64),
                       np.array(lens, np.int64),
                       np.concatenate(pts).astype(np.float32) if pts else np.zeros((0, 2), np.float32),
                       np.array(keys, np.int64))
    return YoloPart(np.array(shapes, np.int64).reshape(-1, 2), problems, raw, found)


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


def _parse_yolo_line(line: str, nc: int, shape: tuple[int, int], where: str):
    """(box float32 xyxy pixels, class, polygon float32 (k,2) pixels or None), a Problem, or None
    (a blank line)."""
    parts = line.split()
    if not parts:
        return None
    try:
        cls, vals = int(parts[0]), np.array([float(v) for v in parts[1:]], np.float32)
    except ValueError:
        return Problem("bad_labels", where, f"not numbers: {line[:80]!r}, skipped")
    if not 0 <= cls < nc:
        return Problem("bad_labels", where, f"class {cls} out of range 0..{nc - 1}, skipped")
    h, w = shape
    if len(vals) == 4:
        cx, cy, bw, bh = vals * [w, h, w, h]
        return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32), cls, None
    if len(vals) >= 6 and len(vals) % 2 == 0:
        poly = vals.reshape(-1, 2) * [w, h]
        return np.concatenate([poly.min(0), poly.max(0)]).astype(np.float32), cls, poly.astype(np.float32)
    return Problem("bad_labels", where, f"expected 4 box values or >= 3 polygon points, got {len(vals)} values, "
                                        "skipped")


# ---- the cached index, once per node -----------------------------------------------------------
def index_cache(spec: SplitSpec) -> Path:
    base = cache_base(spec)
    return cache_path(base.with_name(f"{base.name}.index.npz"))


def load_index(cfg: DataConfig, split: str, info=None) -> LabelIndex:
    """The split's label index, from its cache when every source file is unchanged; else built
    by local rank 0 (under torchrun) while the node's other ranks wait, then loaded by them.
    info: this process's utils.dist.DistInfo (default: torchrun's environment)."""
    spec = cfg.splits.get(split)
    if spec is None:
        raise ConfigError(f"{cfg.source}: no '{split}' split")
    cache = index_cache(spec)
    if cfg.format == "coco":
        stamp, build = file_stamp([spec.annotations]), lambda: read_coco(spec, cfg.category_ids)
    else:
        listing = list_images(spec)
        stamp, build = yolo_stamp(listing, cfg.nc), lambda: read_yolo(listing, cfg.nc)
    index = LabelIndex.load(cache, stamp)
    if index is None:
        from utils.dist import dist_info_from_env  # torch: only when there is an index to build

        index = _build_once_per_node(cfg, split, cache, stamp, build, info or dist_info_from_env())
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


def _build_once_per_node(cfg: DataConfig, split: str, cache: Path, stamp: list, build, info) -> LabelIndex:
    """info: the process's utils.dist.DistInfo."""
    from utils.dist import from_local_leader

    built: list[LabelIndex] = []

    def build_and_save() -> str:
        built.append(_timed_build(cfg, split, build, info))
        return "saved" if built[0].save(cache, stamp) else "unsaved"

    status = from_local_leader(info, f"label-index/{cache}/{json.dumps(stamp)}",
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
    return _timed_build(cfg, split, build, info)


def _timed_build(cfg: DataConfig, split: str, build, info) -> LabelIndex:
    t0 = time.perf_counter()
    LOG.info("%s %s: building the label index", cfg.name, split)
    index = build()
    seconds = time.perf_counter() - t0
    index.built_by = {"pid": os.getpid(), "rank": info.rank, "local_rank": info.local_rank,
                      "host": socket.gethostname(), "seconds": round(seconds, 2)}
    LOG.info("%s %s: label index built in %.1f s", cfg.name, split, seconds)
    return index


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
    for key in ARRAYS:
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
