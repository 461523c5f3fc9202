"""Inference sources: image files, folders, globs, .txt lists, videos, webcams and streams.

Each yields Frames; a file that cannot be decoded is reported and skipped with a count."""
from __future__ import annotations

import glob
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from data.label_index import image_problem

LOG = logging.getLogger("gradpath.detect")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")


class SourceError(ValueError):
    """A source that cannot be opened at all (missing path, unreadable video, no camera)."""


@dataclass
class Frame:
    image: np.ndarray       # BGR uint8 (H,W,3)
    path: str               # file the frame came from (or the stream/camera name)
    index: int              # frame number within a video/stream, 0 for images
    is_video: bool
    fps: float = 0.0
    n_frames: int = 0


@dataclass
class SkipReport:
    skipped: list[tuple[str, str]]

    def __str__(self) -> str:
        return f"{len(self.skipped)} skipped: " + "; ".join(f"{p} ({why})" for p, why in self.skipped)


def frame_order(path: Path) -> list:
    """Sort key of a folder's or glob's files: numbers in names compare as numbers, so the frames
    of a sequence named 1.png ... 10.png come in order, as zero-padded names do."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def expand(source: str) -> list[Path]:
    """Files a non-stream source names: a file, a folder, a glob, or a .txt list of paths."""
    p = Path(source)
    if any(ch in source for ch in "*?["):
        files = sorted((Path(f) for f in glob.glob(source, recursive=True)), key=frame_order)
    elif p.is_dir():
        files = sorted((f for f in p.iterdir() if f.is_file()), key=frame_order)
    elif p.is_file() and p.suffix.lower() == ".txt":
        files = [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    elif p.is_file():
        files = [p]
    else:
        raise SourceError(f"--source {source}: no such file, folder or glob")
    if not files:
        raise SourceError(f"--source {source}: matches no files")
    return files


def is_camera(source: str) -> bool:
    return source.isdigit()


def is_stream(source: str) -> bool:
    return source.lower().startswith(STREAM_PREFIXES) or is_camera(source)


def read_image(path: Path) -> np.ndarray | None:
    """BGR image with EXIF orientation applied (cv2.imread does so), or None when missing, truncated
    or undecodable: the same integrity check as training and validation use."""
    if image_problem(path):
        return None
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def iter_files(files: list[Path], skips: SkipReport) -> Iterator[Frame]:
    for f in files:
        suffix = f.suffix.lower()
        if not f.is_file():
            skips.skipped.append((str(f), "missing"))
            LOG.warning("%s: missing, skipped", f)
        elif suffix in VIDEO_SUFFIXES:
            yield from iter_video(f, skips)
        elif suffix in IMAGE_SUFFIXES:
            img = read_image(f)
            if img is None:
                skips.skipped.append((str(f), "corrupt image"))
                LOG.warning("%s: cannot decode image, skipped", f)
                continue
            yield Frame(img, str(f), 0, False)
        else:
            skips.skipped.append((str(f), "not an image or video"))
            LOG.warning("%s: not an image or video file, skipped", f)


def iter_video(path: Path, skips: SkipReport) -> Iterator[Frame]:
    """Every frame of a video file, none dropped."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        skips.skipped.append((str(path), "unreadable video"))
        LOG.warning("%s: cannot open video, skipped", path)
        return
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    i = 0
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                break
            yield Frame(img, str(path), i, True, fps, n)
            i += 1
    finally:
        cap.release()


class LatestFrameReader:
    """Reads a live stream in a thread and keeps only the newest frame (no growing lag)."""

    def __init__(self, source: str, timeout_s: float = 10.0):
        self.cap = cv2.VideoCapture(int(source) if is_camera(source) else source)
        if not self.cap.isOpened():
            raise SourceError(f"--source {source}: cannot open camera or stream")
        self.source, self.fps = source, self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.frame, self.count, self.done = None, 0, False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.time() + timeout_s
        while self.frame is None and not self.done and time.time() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while not self.done:
            ok, img = self.cap.read()
            if not ok:
                self.done = True
                break
            with self.lock:
                self.frame, self.count = img, self.count + 1

    def __iter__(self) -> Iterator[Frame]:
        last = 0
        try:
            while not (self.done and self.count == last):
                with self.lock:
                    img, count = self.frame, self.count
                if img is None or count == last:
                    time.sleep(0.002)
                    continue
                last = count
                yield Frame(img, self.source, count - 1, True, self.fps, 0)
        finally:
            self.done = True
            self.thread.join(timeout=2)
            self.cap.release()


def open_source(source: str, skips: SkipReport) -> Iterator[Frame]:
    if is_stream(source):
        return iter(LatestFrameReader(source))
    return iter_files(expand(source), skips)
