"""One tracker per source, so several videos or streams in one run keep their own identities."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.infer.track.tracker import TrackCounts, Tracker, TrackerConfig
from utils.structures import Detections, TrackedDetections

TRACKERS = {"bytetrack": TrackerConfig}  # --tracker NAME -> its default configuration


def tracker_config(name: str) -> TrackerConfig:
    if name not in TRACKERS:
        raise ValueError(f"--tracker {name}: unknown tracker (known: {', '.join(sorted(TRACKERS))})")
    return TRACKERS[name]()


@dataclass
class SourceTrackers:
    """Trackers by source name, each made on its source's first frame with that source's fps
    (which sets the lost-track buffer in frames)."""

    config: TrackerConfig = field(default_factory=TrackerConfig)
    trackers: dict[str, Tracker] = field(default_factory=dict)

    def update(self, source: str, fps: float, dets: Detections, frame_index: int) -> TrackedDetections:
        tracker = self.trackers.get(source)
        if tracker is None:
            tracker = self.trackers[source] = Tracker(self.config, fps)
        return tracker.update(dets, frame_index)

    def counts(self) -> TrackCounts:
        """Summed over the sources."""
        total = TrackCounts()
        for t in self.trackers.values():
            total.started += t.counts.started
            total.ended += t.counts.ended
            total.alive += t.counts.alive
        return total
