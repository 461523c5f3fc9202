"""Multi-object tracking by detection for one source: Kalman motion per track, association in
stages (confident detections first, then the weak ones against the tracks left, then recovery of
lost tracks by motion-gated distance), tracks confirmed after a few frames and kept through a
lost-track buffer measured in frames.

    tracker = Tracker(TrackerConfig(), fps=25.0)
    for frame_index, dets in ...:                 # Detections in original-image pixels
        tracked = tracker.update(dets, frame_index)   # TrackedDetections with track_ids
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.infer.track import kalman
from engine.infer.track.assign import assign
from engine.infer.track.cues import ambiguous_pairs, box_iou, class_agreement, crop_mask, shifted_mask_iou
from engine.infer.track.kalman import CHI2_95_4DOF, MotionNoise
from engine.infer.track.track import CONFIRMED, TENTATIVE, Track
from utils.structures import Detections, TrackedDetections


@dataclass(frozen=True)
class TrackerConfig:
    high_score: float = 0.5        # detections at or above take part in the first stage
    low_score: float = 0.1         # weaker ones are ignored
    new_track_score: float = 0.6   # an unmatched detection this confident starts a track
    match_iou: float = 0.2         # least similarity of a first-stage match
    low_match_iou: float = 0.4     # the weak detections need a clearer overlap
    confirm_hits: int = 3          # consecutive frames before a new track gets an id
    lost_seconds: float = 2.0      # how long a lost track can be found again
    class_penalty: float = 0.5     # similarity factor when the detection's class is not the track's
    mask_weight: float = 0.5       # share of mask IoU in the similarity of ambiguous pairs
    ambiguous_iou: float = 0.3     # a box overlapping two candidates this much is ambiguous
    duplicate_iou: float = 0.7     # an unmatched box overlapping a matched one this much is its duplicate
    recover_gate: float = CHI2_95_4DOF  # largest motion distance for recovering a lost track
    noise: MotionNoise = field(default_factory=MotionNoise)


@dataclass
class FrameDetections:
    """A frame's detections as numpy arrays (masks stay as given, cropped only when needed)."""

    boxes: np.ndarray      # (N,4) xyxy
    scores: np.ndarray     # (N,)
    classes: np.ndarray    # (N,) int
    masks: torch.Tensor | None

    @classmethod
    def of(cls, dets: Detections) -> "FrameDetections":
        return cls(dets.boxes.detach().float().cpu().numpy().reshape(-1, 4), dets.scores.detach().float().cpu().numpy(),
                   dets.classes.detach().cpu().numpy().astype(np.int64), dets.masks)

    def mask(self, k: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        if self.masks is None:
            return None
        crop, origin = crop_mask(self.masks[k], self.boxes[k])
        return crop.cpu().numpy().astype(bool), origin


@dataclass
class TrackCounts:
    started: int = 0   # tracks that got an id
    ended: int = 0     # tracks with an id that were given up
    alive: int = 0     # tracks with an id held now (seen or lost)


class Tracker:
    """Tracks of one source. update() must see the source's frames in increasing order; a gap
    in the indices (a stream that dropped frames) is predicted over, not treated as a cut."""

    def __init__(self, config: TrackerConfig | None = None, fps: float = 30.0):
        self.config = config or TrackerConfig()
        self.buffer = max(1, int(round(self.config.lost_seconds * (fps if fps > 0 else 30.0))))
        self.tracks: list[Track] = []
        self.frame: int | None = None
        self.next_id = 1
        self.counts = TrackCounts()

    def update(self, dets: Detections, frame: int) -> TrackedDetections:
        if self.frame is not None and frame <= self.frame:
            raise ValueError(f"tracker: frame {frame} after frame {self.frame}; frames must come in increasing order")
        dt = 1 if self.frame is None else frame - self.frame
        first, previous, self.frame = self.frame is None, self.frame, frame
        self._predict(dt)
        d = FrameDetections.of(dets)
        matches = self._associate(d, previous)
        for t, k in matches.items():
            self.tracks[t].take(d.boxes[k], float(d.scores[k]), int(d.classes[k]), frame, self.config.noise)
            if self.tracks[t].mask is not None or d.masks is not None:
                self.tracks[t].mask = d.mask(k)
        for t, track in enumerate(self.tracks):
            if t not in matches:
                track.miss()
        self._start_tracks(d, matches, frame, first)
        seen = [(self.tracks[t], k) for t, k in matches.items()]
        self._confirm_and_retire(frame)
        return self._output(dets, seen)

    def _predict(self, dt: float) -> None:
        if not self.tracks:
            return
        mean, cov = kalman.predict(np.stack([t.mean for t in self.tracks]), np.stack([t.cov for t in self.tracks]),
                                   float(dt), self.config.noise)
        for t, m, c in zip(self.tracks, mean, cov):
            t.mean, t.cov = m, c

    def _similarity(self, tracks: list[int], d: FrameDetections, dets: np.ndarray, use_masks: bool) -> np.ndarray:
        """(T,D) IoU of predicted and detected boxes, blended with mask IoU where the boxes are
        ambiguous, and lowered where the classes disagree."""
        cfg = self.config
        boxes = np.stack([self.tracks[t].box for t in tracks]) if tracks else np.zeros((0, 4))
        sim = box_iou(boxes, d.boxes[dets])
        if use_masks and d.masks is not None and sim.size:
            for i, j in zip(*np.nonzero(ambiguous_pairs(sim, cfg.ambiguous_iou))):
                track = self.tracks[tracks[i]]
                if track.mask is None:
                    continue
                # the last mask moved along with its box's predicted corner
                moved = (int(round(track.box[0])), int(round(track.box[1])))
                miou = shifted_mask_iou(track.mask[0], moved, *d.mask(int(dets[j])))
                sim[i, j] = (1 - cfg.mask_weight) * sim[i, j] + cfg.mask_weight * miou
        if sim.size:
            track_cls = np.array([self.tracks[t].cls for t in tracks])
            sim = np.where(class_agreement(track_cls, d.classes[dets]), sim, sim * cfg.class_penalty)
        return sim

    def _match(self, tracks: list[int], d: FrameDetections, dets: np.ndarray, minimum: float,
               use_masks: bool = True) -> list[tuple[int, int]]:
        """Assign tracks (indices into self.tracks) to dets (indices into d); returns pairs of those indices."""
        if not tracks or not len(dets):
            return []
        return [(tracks[i], int(dets[j])) for i, j in assign(self._similarity(tracks, d, dets, use_masks), minimum)]

    def _recover(self, tracks: list[int], d: FrameDetections, dets: np.ndarray) -> list[tuple[int, int]]:
        """Lost tracks against the detections nobody took: the motion-gated Mahalanobis distance
        of box and size, same class only (no overlap is left to vouch for the pair)."""
        if not tracks or not len(dets):
            return []
        mean = np.stack([self.tracks[t].mean for t in tracks])
        cov = np.stack([self.tracks[t].cov for t in tracks])
        dist = kalman.gating_distance(mean, cov, kalman.xyxy_to_cxcywh(d.boxes[dets]), self.config.noise)
        same = class_agreement(np.array([self.tracks[t].cls for t in tracks]), d.classes[dets])
        sim = np.where(same & (dist <= self.config.recover_gate), 1.0 / (1.0 + dist), 0.0)
        return [(tracks[i], int(dets[j])) for i, j in assign(sim, 1e-9)]

    def _associate(self, d: FrameDetections, previous: int | None) -> dict[int, int]:
        cfg = self.config
        high = np.nonzero(d.scores >= cfg.high_score)[0]
        low = np.nonzero((d.scores >= cfg.low_score) & (d.scores < cfg.high_score))[0]
        confirmed = [t for t, tr in enumerate(self.tracks) if tr.status == CONFIRMED]
        tentative = [t for t, tr in enumerate(self.tracks) if tr.status == TENTATIVE]
        matches: dict[int, int] = {}

        def take(pairs):
            matches.update(pairs)
            return [t for t in confirmed if t not in matches], np.array([k for k in high if k not in matches.values()], int)

        left, high_left = take(self._match(confirmed, d, high, cfg.match_iou))
        recent = [t for t in left if self.tracks[t].last.frame == previous]  # seen in the previous frame
        left, _ = take(self._match(recent, d, low, cfg.low_match_iou, use_masks=False))
        _, high_left = take(self._match(tentative, d, high_left, cfg.match_iou))
        take(self._recover([t for t in left if t not in matches], d, high_left))
        return matches

    def _start_tracks(self, d: FrameDetections, matches: dict[int, int], frame: int, first: bool) -> None:
        cfg = self.config
        taken = set(matches.values())
        matched_boxes = d.boxes[sorted(taken)] if taken else np.zeros((0, 4))
        for k in np.nonzero(d.scores >= cfg.new_track_score)[0]:
            if k in taken:
                continue
            if len(matched_boxes) and box_iou(d.boxes[k:k + 1], matched_boxes).max() >= cfg.duplicate_iou:
                continue  # a second box on an object already tracked (another class, a part)
            track = Track.start(d.boxes[k], float(d.scores[k]), int(d.classes[k]), frame, cfg.noise)
            track.mask = d.mask(int(k))
            if first:  # nothing to confirm against on a source's first frame
                track.hits = cfg.confirm_hits
            matches[len(self.tracks)] = int(k)
            self.tracks.append(track)
            matched_boxes = np.concatenate([matched_boxes, d.boxes[k:k + 1]])

    def _confirm_and_retire(self, frame: int) -> None:
        kept = []
        for t in self.tracks:
            if t.status == TENTATIVE and t.hits >= self.config.confirm_hits:
                t.status, t.track_id = CONFIRMED, self.next_id
                self.next_id += 1
                self.counts.started += 1
            if t.status == TENTATIVE and t.hits == 0:
                continue  # a new track that missed a frame was noise
            if t.status == CONFIRMED and t.missed(frame) > self.buffer:
                self.counts.ended += 1
                continue
            kept.append(t)
        self.tracks = kept
        self.counts.alive = sum(t.status == CONFIRMED for t in kept)

    def _output(self, dets: Detections, seen: list[tuple[Track, int]]) -> TrackedDetections:
        """The confirmed tracks seen in this frame, with the detection's box, score and mask."""
        rows = sorted(((tr, k) for tr, k in seen if tr.status == CONFIRMED), key=lambda r: r[0].track_id)
        idx = torch.tensor([k for _, k in rows], dtype=torch.long, device=dets.boxes.device)
        return TrackedDetections(
            boxes=dets.boxes[idx], scores=dets.scores[idx],
            classes=torch.tensor([tr.cls for tr, _ in rows], dtype=torch.int64, device=dets.classes.device),
            masks=None if dets.masks is None else dets.masks[idx],
            track_ids=torch.tensor([tr.track_id for tr, _ in rows], dtype=torch.int64), frame=self.frame)
