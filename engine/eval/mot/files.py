"""MOT text files: one box per line, `frame,id,x,y,w,h,conf,class,visibility` (frames from 1,
boxes as top-left corner and size in pixels). Tracker output writes -1 for visibility; ground
truth (MOT17 style) has a consider flag in the conf column (0 = ignore) and the visibility."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.io import atomic_write_text


class MotFileError(ValueError):
    """A MOT file that cannot be read: the message names the file and line."""


@dataclass
class MotTable:
    """The rows of a MOT file. frames: int64 (N,) from 1. ids: int64 (N,). boxes: float64 (N,4)
    x, y, w, h. conf: (N,) (for ground truth, the consider flag). classes: int64 (N,), -1 if
    absent. visibility: (N,) in 0..1, 1 if absent or -1."""

    frames: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    conf: np.ndarray
    classes: np.ndarray
    visibility: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, keep: np.ndarray) -> "MotTable":
        return MotTable(self.frames[keep], self.ids[keep], self.boxes[keep], self.conf[keep], self.classes[keep],
                        self.visibility[keep])

    @classmethod
    def empty(cls) -> "MotTable":
        z = np.zeros(0)
        return cls(z.astype(np.int64), z.astype(np.int64), np.zeros((0, 4)), z, z.astype(np.int64), z)


def _parse(path: Path, n: int, line: str) -> list[float]:
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < 6:
        raise MotFileError(f"{path}:{n}: {len(parts)} fields, a MOT line needs at least frame,id,x,y,w,h")
    try:
        vals = [float(p) for p in parts[:9]]
    except ValueError:
        raise MotFileError(f"{path}:{n}: not a number in {line.strip()!r}") from None
    if vals[0] < 1 or vals[0] != int(vals[0]):
        raise MotFileError(f"{path}:{n}: frame {parts[0]} (frames are whole numbers from 1)")
    if vals[4] < 0 or vals[5] < 0:
        raise MotFileError(f"{path}:{n}: negative box size {parts[4]}x{parts[5]}")
    return vals + [1.0, -1.0, 1.0][len(vals) - 6:] if len(vals) < 9 else vals


def read_mot(path: str | Path) -> MotTable:
    """Read and check a MOT file (6 to 10 comma-separated fields a line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise MotFileError(f"{path}: no such MOT file")
    rows, seen = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = _parse(path, n, line)
        key = (int(vals[0]), int(vals[1]))
        if key in seen:
            raise MotFileError(f"{path}:{n}: id {key[1]} twice in frame {key[0]} (first on line {seen[key]})")
        seen[key] = n
        rows.append(vals)
    if not rows:
        return MotTable.empty()
    a = np.array(rows, dtype=np.float64)
    vis = np.where(a[:, 8] < 0, 1.0, a[:, 8])
    as_int = a[:, [0, 1, 7]].astype(np.int64)
    return MotTable(as_int[:, 0], as_int[:, 1], a[:, 2:6], a[:, 6], as_int[:, 2], vis)


def mot_lines(frame: int, ids: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> str:
    """Tracker output lines for one frame; `frame` counts from 1."""
    out = []
    for i, (x1, y1, x2, y2), s, c in zip(ids.tolist(), boxes_xyxy.tolist(), scores.tolist(), classes.tolist()):
        out.append(f"{frame},{i},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{s:.4f},{c},-1\n")
    return "".join(out)


class MotWriter:
    """Collects one source's tracks frame by frame and writes the file atomically on close."""

    def __init__(self, path: str | Path):
        self.path, self.lines = Path(path), []

    def add(self, frame_index: int, ids: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray,
            classes: np.ndarray) -> None:
        """frame_index: the source's frame index from 0 (written from 1)."""
        self.lines.append(mot_lines(frame_index + 1, ids, boxes_xyxy, scores, classes))

    def close(self) -> Path:
        return atomic_write_text(self.path, "".join(self.lines))
