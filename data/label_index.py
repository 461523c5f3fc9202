"""The validated label index: every image's instances parsed once, checked, stored in flat numpy
arrays (workers share them without copy-on-access growth), cached beside the labels and rebuilt
when a source file's size or mtime changes."""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple
from pathlib import Path

import numpy as np

from utils.io import atomic_write_bytes

LOG = logging.getLogger("gradpath.data")
LABELS_LOG = logging.getLogger("gradpath.data.labels")  # one line per problem found (data.check quiets it)
INDEX_VERSION = 3
EXAMPLES_PER_KIND = 5  # file:line examples kept of each kind of problem (data.check prints them)


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
            b = self.boxes[four]
            outline = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], 1)  # as check_instance makes it
            pts = self.points[self.seg_offsets[four][:, None] + np.arange(4)]
            flags[four] = (pts != outline).any(axis=(1, 2))
        return flags

    def has_polygons(self) -> bool:
        return bool(self.polygon_flags().any())

    def summary(self) -> str:
        c = self.counts
        return (f"{c.get('images', 0)} images, {c.get('instances', 0)} instances; missing {c.get('missing', 0)}, "
                f"empty {c.get('empty', 0)}, corrupt {c.get('corrupt', 0)}, fixed {c.get('fixed', 0)}, "
                f"bad labels skipped {c.get('bad_labels', 0)}, crowd (eval only) {c.get('crowd', 0)}")

    def save(self, path: Path, stamp: list) -> None:
        arrays = {k: getattr(self, k) for k in ("files", "image_ids", "shapes", "inst_offsets", "boxes", "classes",
                                                "seg_offsets", "points")}
        meta = json.dumps({"version": INDEX_VERSION, "stamp": stamp, "counts": self.counts,
                           "examples": self.examples})
        try:  # checked on loading, so no fsync
            atomic_write_bytes(path, lambda f: np.savez(f, meta=np.array(meta), **arrays), fsync=False)
        except OSError as e:  # e.g. a full disk: keep going without a cache
            LOG.warning("label index not cached (%s): %s", path, e)

    @classmethod
    def load(cls, path: Path, stamp: list) -> "LabelIndex | None":
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") != INDEX_VERSION or meta.get("stamp") != stamp:
                    return None
                return cls(**{k: z[k] for k in z.files if k != "meta"}, counts=meta["counts"],
                           examples=meta.get("examples", {}))
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


class IndexBuilder:
    """Accumulates validated instances image by image into flat arrays."""

    def __init__(self):
        self.files, self.ids, self.shapes = [], [], []
        self.offsets, self.boxes, self.classes, self.seg_offsets, self.points = [0], [], [], [0], []
        self.findings = Findings()

    @property
    def counts(self) -> Counter:
        return self.findings.counts

    def add_image(self, file: Path, image_id: int, shape: tuple[int, int],
                  instances: list[tuple[np.ndarray, int, np.ndarray]]) -> None:
        problem = image_problem(file) or ("corrupt" if min(shape) <= 0 else None)
        if problem:
            self.findings.add(Problem(problem, str(file), f"image {problem}, skipped"))
            return
        self.files.append(str(file))
        self.ids.append(int(image_id))
        self.shapes.append(shape)
        if not instances:
            self.findings.add(Problem("empty", str(file), "no instances", warn=False))
        for box, cls, poly in instances:
            self.boxes.append(box)
            self.classes.append(cls)
            self.points.append(poly)
            self.seg_offsets.append(self.seg_offsets[-1] + len(poly))
        self.offsets.append(self.offsets[-1] + len(instances))

    def build(self) -> LabelIndex:
        self.counts["images"] = len(self.files)
        self.counts["instances"] = len(self.classes)
        pts = np.concatenate(self.points).astype(np.float32) if self.points else np.zeros((0, 2), np.float32)
        return LabelIndex(np.array(self.files, dtype=str), np.array(self.ids, np.int64),
                          np.array(self.shapes, np.int32).reshape(-1, 2), np.array(self.offsets, np.int64),
                          np.array(self.boxes, np.float32).reshape(-1, 4), np.array(self.classes, np.int64),
                          np.array(self.seg_offsets, np.int64), pts, dict(self.counts), self.findings.examples)


def check_instance(box_xyxy: np.ndarray, poly: np.ndarray | None, shape: tuple[int, int], problems: list[Problem],
                   where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Clip to the image, drop degenerate boxes; a missing/short polygon becomes the box outline.
    What it finds is appended to `problems`."""
    h, w = shape
    if not np.all(np.isfinite(box_xyxy)):
        problems.append(Problem("bad_labels", where, f"non-finite box {box_xyxy.tolist()}, skipped"))
        return None
    clipped = np.clip(box_xyxy, 0, [w, h, w, h]).astype(np.float32)
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        problems.append(Problem("bad_labels", where,
                                f"box {box_xyxy.tolist()} has no area inside the {w}x{h} image, skipped"))
        return None
    if not np.array_equal(clipped, box_xyxy.astype(np.float32)):
        problems.append(Problem("fixed", where, f"box clipped to the {w}x{h} image", warn=False))
    if poly is None or len(poly) < 3 or not np.all(np.isfinite(poly)):
        if poly is not None:
            problems.append(Problem("fixed", where, f"polygon with {len(poly)} point(s) or non-finite values, "
                                                    "the box outline is used as its mask"))
        x1, y1, x2, y2 = clipped
        poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    else:
        poly = np.clip(poly, 0, [w, h]).astype(np.float32)
    return clipped, poly
