"""Tracking inside a detect run: one tracker per source (each video, stream or camera, and the
images of the source taken as one sequence of frames), its MOT file, the short trails drawn on
the saved frames, and the counts printed at the end.

The predictor calls update() from one thread, in frame order (its writer thread), so the
identities go on across the pipeline's batches."""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from engine.eval.mot.files import MotWriter
from engine.infer.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Frame, SourceError, expand, is_stream
from engine.infer.track.sources import SourceTrackers, tracker_config
from engine.infer.track.tracker import TrackCounts
from utils.structures import Detections, TrackedDetections

TRAIL_FRAMES = 30  # how many past centres of a track are drawn


def check_sequence(source: str) -> None:
    """Raise SourceError (one line) when `source` is no sequence of frames: a single image, or
    images of different sizes (not one camera's frames). Videos, streams and webcams are."""
    if is_stream(source):
        return
    files = expand(source)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    has_video = any(f.suffix.lower() in VIDEO_SUFFIXES for f in files)
    if not images or (has_video and len(images) == 1):  # an image beside videos is a one-frame sequence
        return
    if len(images) == 1:
        raise SourceError(f"--track: --source {source} is a single image; tracking needs a video, a stream "
                          "or a folder of frames")
    sizes = _image_sizes(images)
    if len(sizes) > 1:
        raise SourceError(f"--track: --source {source} is no sequence of frames: its {len(images)} images have "
                          f"{len(sizes)} different sizes (e.g. {' and '.join('x'.join(map(str, s)) for s in sizes[:2])})")


def _image_sizes(images: list[Path]) -> list[tuple[int, int]]:
    """The distinct (w, h) of the images, from their headers (unreadable ones are left to the
    reader, which reports and skips them)."""
    from PIL import Image

    sizes: list[tuple[int, int]] = []
    for f in images:
        try:
            with Image.open(f) as im:
                size = im.size
        except OSError:
            continue
        if size not in sizes:
            sizes.append(size)
    return sizes


def _file_name(source: str) -> str:
    """A MOT file name for a source: a video's stem, a folder's name, a stream's URL made safe."""
    name = source if is_stream(source) else Path(source).stem
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "stream"


@dataclass
class _Source:
    """One source's state besides its tracker."""

    writer: MotWriter | None
    trails: dict[int, deque] = field(default_factory=dict)   # track id -> recent box centres
    last_seen: dict[int, int] = field(default_factory=dict)  # track id -> frame index
    images: int = 0                                          # images of an image sequence so far


class TrackingRun:
    """Tracks the frames of a detect run. `save_dir`: where MOT files go (`tracks/NAME.txt`), or
    None to write none."""

    def __init__(self, tracker: str, source: str, save_dir: Path | None):
        self.trackers = SourceTrackers(tracker_config(tracker))
        self.source, self.save_dir = source, save_dir
        self.sources: dict[str, _Source] = {}

    def _key(self, frame: Frame) -> str:
        """A video's or stream's frames are one sequence, the source's images another."""
        return frame.path if frame.is_video else self.source

    def _state(self, frame: Frame) -> _Source:
        key = self._key(frame)
        state = self.sources.get(key)
        if state is None:
            writer = None
            if self.save_dir is not None:
                stem = _file_name(frame.path if frame.is_video else str(Path(frame.path).parent.resolve()))
                taken = {s.writer.path.name for s in self.sources.values() if s.writer}
                name, n = f"{stem}.txt", 2
                while name in taken:  # two videos with one stem in different folders
                    name, n = f"{stem}_{n}.txt", n + 1
                writer = MotWriter(self.save_dir / "tracks" / name)
            state = self.sources[key] = _Source(writer)
        return state

    def update(self, frame: Frame, dets: Detections) -> TrackedDetections:
        state = self._state(frame)
        index = frame.index if frame.is_video else state.images  # images: their place in the sequence
        tracked = self.trackers.update(self._key(frame), frame.fps, dets, index)
        state.images += not frame.is_video
        if state.writer is not None:
            state.writer.add(index, tracked.track_ids.numpy(), tracked.boxes.cpu().numpy(),
                             tracked.scores.cpu().numpy(), tracked.classes.cpu().numpy())
        self._extend_trails(state, tracked, index)
        return tracked

    def _extend_trails(self, state: _Source, tracked: TrackedDetections, index: int) -> None:
        boxes = tracked.boxes.cpu().numpy()
        for tid, (x1, y1, x2, y2) in zip(tracked.track_ids.tolist(), boxes.tolist()):
            state.trails.setdefault(tid, deque(maxlen=TRAIL_FRAMES)).append((int((x1 + x2) / 2), int((y1 + y2) / 2)))
            state.last_seen[tid] = index
        for tid in [t for t, seen in state.last_seen.items() if index - seen > TRAIL_FRAMES]:
            del state.trails[tid], state.last_seen[tid]

    def trails(self, frame: Frame, tracked: TrackedDetections) -> list[tuple[int, list[tuple[int, int]]]]:
        """(track id, centres oldest first) of the tracks drawn on this frame."""
        state = self.sources[self._key(frame)]
        return [(tid, list(state.trails[tid])) for tid in tracked.track_ids.tolist() if tid in state.trails]

    def counts(self) -> TrackCounts:
        return self.trackers.counts()

    def close(self) -> list[Path]:
        """Write the MOT files; their paths."""
        return [s.writer.close() for s in self.sources.values() if s.writer is not None]

    def summary(self) -> str:
        c = self.counts()
        return f"tracks: {c.started} started, {c.ended} ended, {c.alive} alive ({len(self.sources)} source(s))"
