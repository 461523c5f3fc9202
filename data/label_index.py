"""The validated label index: every image's instances parsed once, checked, stored in flat numpy
arrays (workers share them without copy-on-access growth), cached beside the labels and rebuilt
when a source file's size or mtime changes.

Checking is vectorised over all instances at once (`check_instances`), so a full-COCO index is
not 860k trips through Python; `assemble` turns checked instances and the image table into the
index. What validation finds is a list of Problems, counted and sampled by Findings (data.check
prints them). The cache records which process built it (`built_by`)."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from utils.io import atomic_write_bytes

LOG = logging.getLogger("gradpath.data")
LABELS_LOG = logging.getLogger("gradpath.data.labels")  # one line per problem found (data.check quiets it)
INDEX_VERSION = 3
EXAMPLES_PER_KIND = 5  # file:line examples kept of each kind of problem (data.check prints them)
ARRAYS = ("files", "image_ids", "shapes", "inst_offsets", "boxes", "classes", "seg_offsets", "points")


class Problem(NamedTuple):
    """One thing validation found: `kind` is the count it adds to (bad_labels, fixed, duplicates,
    missing, corrupt, missing_labels, empty, crowd), `where` the file or file:line."""
    kind: str
    where: str
    message: str
    warn: bool = True  # logged while the index is built (clipped boxes and absent label files are not)


class Findings:
    """Every Problem of a split: a count per kind and the first few examples of each. The counts
    are the index's `counts` (the one-line summary); the examples are what data.check shows."""

    def __init__(self, counts: dict | None = None, examples: dict | None = None):
        self.counts: Counter = Counter(counts or {})
        self.examples: dict[str, list[str]] = {k: list(v) for k, v in (examples or {}).items()}

    def add(self, problem: Problem) -> None:
        self.counts[problem.kind] += 1
        kept = self.examples.setdefault(problem.kind, [])
        if len(kept) < EXAMPLES_PER_KIND:
            kept.append(f"{problem.where}: {problem.message}")
        if problem.warn:
            LABELS_LOG.warning("%s: %s", problem.where, problem.message)

    def extend(self, problems: list[Problem]) -> None:
        for problem in problems:
            self.add(problem)

    def extend_in_order(self, keyed: list[tuple[int, Problem]]) -> None:
        """Problems found kind by kind, added in the order of their keys (their place in the
        labels), so that each kind's examples are its first ones, as a record-by-record pass has them."""
        for _, problem in sorted(keyed, key=lambda kp: kp[0]):
            self.add(problem)


@dataclass
class LabelIndex:
    files: np.ndarray          # (n,) str image paths
    image_ids: np.ndarray      # (n,) int64 dataset image ids
    shapes: np.ndarray         # (n,2) int32 (h, w) as the labels say
    inst_offsets: np.ndarray   # (n+1,) int64: image i owns instances [o[i], o[i+1])
    boxes: np.ndarray          # (M,4) float32 xyxy pixels
    classes: np.ndarray        # (M,) int64 contiguous
    seg_offsets: np.ndarray    # (M+1,) int64: instance j owns points [s[j], s[j+1])
    points: np.ndarray         # (P,2) float32 polygon points in pixels
    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)  # kind -> the first few "file:line: message" (Findings)
    built_by: dict = field(default_factory=dict)  # pid, rank, host and seconds of the build

    def __len__(self) -> int:
        return len(self.files)

    def instances(self, i: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        a, b = self.inst_offsets[i], self.inst_offsets[i + 1]
        segs = [self.points[self.seg_offsets[j]:self.seg_offsets[j + 1]] for j in range(a, b)]
        return self.boxes[a:b], self.classes[a:b], segs

    def polygon_flags(self) -> np.ndarray:
        """(M,) bool: the instance has a polygon of its own, not only the outline of its box (what
        box-only labels get)."""
        lens = np.diff(self.seg_offsets)
        flags = lens != 4
        four = np.flatnonzero(~flags)
        if len(four):
            pts = self.points[self.seg_offsets[four][:, None] + np.arange(4)]
            flags[four] = (pts != box_outlines(self.boxes[four])).any(axis=(1, 2))
        return flags

    def has_polygons(self) -> bool:
        return bool(self.polygon_flags().any())

    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in ARRAYS)

    def summary(self) -> str:
        c = self.counts
        return (f"{c.get('images', 0)} images, {c.get('instances', 0)} instances; missing {c.get('missing', 0)}, "
                f"empty {c.get('empty', 0)}, corrupt {c.get('corrupt', 0)}, fixed {c.get('fixed', 0)}, "
                f"bad labels skipped {c.get('bad_labels', 0)}, crowd (eval only) {c.get('crowd', 0)}")

    def save(self, path: Path, stamp: list) -> bool:
        """Write the cache (atomically); False when it could not be written."""
        arrays = {k: getattr(self, k) for k in ARRAYS}
        meta = json.dumps({"version": INDEX_VERSION, "stamp": stamp, "counts": self.counts, "examples": self.examples,
                           "built_by": self.built_by})
        try:  # checked on loading, so no fsync
            atomic_write_bytes(path, lambda f: np.savez(f, meta=np.array(meta), **arrays), fsync=False)
        except OSError as e:  # e.g. a full disk: keep going without a cache
            LOG.warning("label index not cached (%s): %s", path, e)
            return False
        return True

    @classmethod
    def load(cls, path: Path, stamp: list) -> "LabelIndex | None":
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") != INDEX_VERSION or meta.get("stamp") != stamp:
                    return None
                return cls(**{k: z[k] for k in ARRAYS}, counts=meta["counts"], examples=meta.get("examples", {}),
                           built_by=meta.get("built_by", {}))
        except (OSError, ValueError, KeyError) as e:
            LOG.warning("label index %s unreadable, rebuilding: %s", path, e)
            return None


def file_stamp(paths: list[Path]) -> list:
    """Size and mtime of each source: any change rebuilds the index."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def image_problem(path: Path) -> str | None:
    """A cheap integrity check: exists, not empty, JPEG/PNG not truncated (end markers present)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "corrupt"
    with path.open("rb") as f:
        return stream_problem(f, size)


def stream_problem(f, size: int) -> str | None:
    """image_problem of an open file of `size` bytes (size > 0); leaves the file anywhere."""
    head = f.read(8)
    f.seek(max(size - 16, 0))
    tail = f.read()
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        return "corrupt"
    if head[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        return "corrupt"
    if head[:2] != b"\xff\xd8" and head[:8] != b"\x89PNG\r\n\x1a\n" and head[:2] not in (b"BM", b"II", b"MM") \
            and head[:4] != b"RIFF":
        return "corrupt"
    return None


def image_problems(files: list[Path], threads: int | None = None) -> list[str | None]:
    """image_problem of every file, on a thread pool (the checks wait on the disk, not the GIL),
    one run of files per task."""
    threads = threads or min(8, os.cpu_count() or 1)
    if threads <= 1 or len(files) < 256:
        return [image_problem(f) for f in files]
    step = -(-len(files) // (threads * 4))
    with ThreadPoolExecutor(threads) as pool:
        runs = pool.map(lambda a: [image_problem(f) for f in files[a:a + step]], range(0, len(files), step))
        return [p for run in runs for p in run]


@dataclass
class RawInstances:
    """Instances as the labels give them, before checking; instance j belongs to image row img[j]
    and owns points [sum(seg_lens[:j]), sum(seg_lens[:j+1])) (seg_lens 0: no polygon given);
    keys[j] is its place in the labels (what orders the problems found)."""
    img: np.ndarray       # (m,) int64
    boxes: np.ndarray     # (m,4) float32 xyxy pixels
    classes: np.ndarray   # (m,) int64
    seg_lens: np.ndarray  # (m,) int64
    points: np.ndarray    # (P,2) float polygon points in pixels
    keys: np.ndarray      # (m,) int64

    FIELDS = ("img", "boxes", "classes", "seg_lens", "points", "keys")

    def __len__(self) -> int:
        return len(self.img)

    @classmethod
    def empty(cls) -> "RawInstances":
        return cls(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                   np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: list["RawInstances"]) -> "RawInstances":
        parts = [p for p in parts if len(p)] or [cls.empty()]
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in cls.FIELDS))

    def take(self, keep: np.ndarray) -> "RawInstances":
        """The instances where `keep` (bool (m,) or indices), with their points."""
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        starts = np.cumsum(self.seg_lens) - self.seg_lens
        pts = self.points[ranges(starts[idx], self.seg_lens[idx])]
        return RawInstances(self.img[idx], self.boxes[idx], self.classes[idx], self.seg_lens[idx], pts, self.keys[idx])


def ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """concatenate([arange(s, s + n) for s, n in zip(starts, lens)]) without the loop."""
    lens = np.asarray(lens, np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    out_starts = np.cumsum(lens) - lens
    return np.repeat(np.asarray(starts, np.int64) - out_starts, lens) + np.arange(total)


def box_outlines(boxes: np.ndarray) -> np.ndarray:
    """(m,4) xyxy -> (m,4,2) corner polygons, the mask of an instance without a polygon."""
    b = boxes
    return np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], 1)


def check_instances(raw: RawInstances, shapes: np.ndarray, where: Callable[[int], str],
                    keys: np.ndarray) -> tuple[RawInstances, list[tuple[int, Problem]]]:
    """Clip to the image, drop degenerate boxes; a missing or bad polygon becomes the box outline.
    shapes: (n,2) (h, w) of the image rows; where(j) names instance j; keys[j] is its place in the
    labels (Findings.extend_in_order). Points come back float32, every instance with its own."""
    wh = shapes[raw.img][:, ::-1].astype(np.float64)
    found: list[tuple[int, Problem]] = []
    finite = np.isfinite(raw.boxes).all(1)
    for j in np.flatnonzero(~finite):
        found.append((keys[j], Problem("bad_labels", where(j), f"non-finite box {raw.boxes[j].tolist()}, skipped")))
    clipped = np.clip(np.nan_to_num(raw.boxes), 0, np.tile(wh, 2)).astype(np.float32)
    has_area = (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    for j in np.flatnonzero(finite & ~has_area):
        w, h = (int(v) for v in wh[j])
        found.append((keys[j], Problem("bad_labels", where(j), f"box {raw.boxes[j].tolist()} has no area inside the "
                                                               f"{w}x{h} image, skipped")))
    keep = finite & has_area
    for j in np.flatnonzero(keep & (clipped != raw.boxes.astype(np.float32)).any(1)):
        w, h = (int(v) for v in wh[j])
        found.append((keys[j], Problem("fixed", where(j), f"box clipped to the {w}x{h} image", warn=False)))
    seg_id = np.repeat(np.arange(len(raw)), raw.seg_lens)
    bad_pts = np.bincount(seg_id[~np.isfinite(raw.points).all(1)], minlength=len(raw)) > 0
    given = raw.seg_lens > 0
    bad_poly = keep & given & (bad_pts | (raw.seg_lens < 3))
    for j in np.flatnonzero(bad_poly):
        found.append((keys[j], Problem("fixed", where(j), f"polygon with {raw.seg_lens[j]} point(s) or non-finite "
                                                          "values, the box outline is used as its mask")))
    own = keep & given & ~bad_poly
    bounds = np.repeat(wh.astype(np.float32), raw.seg_lens, axis=0)  # sizes are exact in float32
    pts = np.clip(raw.points, 0, bounds).astype(np.float32, copy=False)
    if own.all():  # the usual case: every instance kept with its own polygon
        return RawInstances(raw.img, clipped, raw.classes, raw.seg_lens, pts, raw.keys), found
    return _with_outlines(raw, keep, own, clipped, pts), found


def _with_outlines(raw: RawInstances, keep: np.ndarray, own: np.ndarray, clipped: np.ndarray,
                   pts: np.ndarray) -> RawInstances:
    """The kept instances: their own (clipped) points `pts`, or their box outline."""
    idx = np.flatnonzero(keep)
    lens = np.where(own[idx], raw.seg_lens[idx], 4)
    out = np.empty((int(lens.sum()), 2), np.float32)
    starts = np.cumsum(lens) - lens
    src_starts = np.cumsum(raw.seg_lens) - raw.seg_lens
    mine = own[idx]
    out[ranges(starts[mine], lens[mine])] = pts[ranges(src_starts[idx[mine]], raw.seg_lens[idx[mine]])]
    outline = ~mine
    out[ranges(starts[outline], lens[outline])] = box_outlines(clipped[idx[outline]]).reshape(-1, 2)
    return RawInstances(raw.img[idx], clipped[idx], raw.classes[idx], lens.astype(np.int64), out, raw.keys[idx])


def assemble(files: list, image_ids: np.ndarray, shapes: np.ndarray, problems: list[str | None],
             inst: RawInstances, findings: Findings) -> LabelIndex:
    """The index of the usable images (problems[i] None and a positive size) and their checked
    instances, in image order and, within an image, in label order."""
    shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
    usable = np.ones(len(files), bool)
    for i, problem in enumerate(problems):
        problem = problem or ("corrupt" if shapes[i].min() <= 0 else None)
        if problem:
            findings.add(Problem(problem, str(files[i]), f"image {problem}, skipped"))
            usable[i] = False
    inst = inst.take(np.flatnonzero(usable[inst.img])[np.argsort(inst.img[usable[inst.img]], kind="stable")])
    row = np.cumsum(usable) - 1  # old image row -> new
    per_image = np.bincount(row[inst.img], minlength=int(usable.sum())).astype(np.int64)
    kept_files = [str(f) for f, u in zip(files, usable) if u]
    for k in np.flatnonzero(per_image == 0):
        findings.add(Problem("empty", kept_files[k], "no instances", warn=False))
    findings.counts["images"], findings.counts["instances"] = int(usable.sum()), len(inst)
    return LabelIndex(np.array(kept_files, dtype=str), np.asarray(image_ids, np.int64)[usable],
                      shapes[usable].astype(np.int32).reshape(-1, 2),
                      np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64),
                      inst.boxes.astype(np.float32).reshape(-1, 4), inst.classes.astype(np.int64),
                      np.concatenate([[0], np.cumsum(inst.seg_lens)]).astype(np.int64),
                      inst.points.astype(np.float32).reshape(-1, 2), dict(findings.counts), findings.examples)
