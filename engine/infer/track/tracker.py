"""Multi-object tracking by detection for one source: Kalman motion per track, association in
stages (confident detections first, then the weak ones against the tracks left, then recovery of
lost tracks by motion-gated distance), tracks confirmed once enough evidence has piled up (or
given back the id of a lost track their motion leads to), kept through a lost-track buffer
measured in frames. Where boxes are ambiguous (objects crossing), motion and size consistency
and, for segmentation models, the mask IoU decide.

    tracker = Tracker(TrackerConfig(), fps=25.0)
    for frame_index, dets in ...:                 # Detections in original-image pixels
        tracked = tracker.update(dets, frame_index)   # TrackedDetections with track_ids
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import engine.infer.track.kalman as kalman
from engine.infer.track.assign import assign
from engine.infer.track.cues import (ambiguous_pairs, box_iou, class_agreement, crop_mask, shifted_mask_iou,
                                     vote_overlap)
from engine.infer.track.kalman import CHI2_95_4DOF, MotionNoise
from engine.infer.track.track import CONFIRMED, MERGED, TENTATIVE, Track
from utils.structures import Detections, TrackedDetections


@dataclass(frozen=True)
class TrackerConfig:
    """Defaults chosen on generated sequences of other seeds than the benchmark's (see
    benchmarks/tracking.py)."""

    high_score: float = 0.5        # detections at or above take part in the first stage
    low_score: float = 0.1         # weaker ones are ignored
    birth_score: float = 0.3       # an unmatched detection this confident starts a tentative track
    confirm_hits: int = 3          # consecutive frames before a new track can get an id ...
    confirm_evidence: float = 3.0  # ... and the summed scores of those frames
    match_iou: float = 0.2         # least similarity of a match by overlap
    low_match_iou: float = 0.4     # the weak detections need a clearer overlap
    lost_seconds: float = 3.0      # how long a lost track can be found again
    lost_iou_frames: int = 10      # after this many missed frames, a lost track is found by motion only
    class_penalty: float = 0.5     # similarity factor when the detection's class is not one of the track's
    class_share: float = 0.2       # a class with this share of a track's votes is one of its classes
    lost_class_overlap: float = 0.1  # least class overlap of a new track and the lost one whose id it takes
    mask_weight: float = 0.5       # share of mask IoU in the similarity of ambiguous pairs
    ambiguous_iou: float = 0.3     # a box overlapping two candidates this much is ambiguous
    duplicate_iou: float = 0.7     # an unmatched box overlapping a matched one this much is its duplicate
    recover_gate: float = CHI2_95_4DOF  # largest motion distance for recovering a lost track
    # appearance (detections with embeddings: a PyTorch model's features, engine.infer.track.appearance)
    look_alpha: float = 0.9        # a track's look: this share of the old, the rest of the new embedding
    clean_iou: float = 0.1         # a detection overlapping another this much does not update a look
    reid_similarity: float = 0.85  # a new track takes a lost id by look alone from this cosine up ...
    reid_margin: float = 0.05      # ... ahead of the next lost track by this much
    reid_seconds: float = 10.0     # how long a lost track with a look can be found by it (motion: lost_seconds)
    look_veto: float = 0.6         # looks less alike than this refuse a match by motion
    look_gap: float = 0.05         # of the tracks a detection is ambiguous between, those whose look is
    look_penalty: float = 0.7      # this much less like it than the best one's get this similarity factor
    noise: MotionNoise = field(default_factory=MotionNoise)


@dataclass
class FrameDetections:
    """A frame's detections as numpy arrays (masks stay as given, cropped only when needed)."""

    boxes: np.ndarray      # (N,4) xyxy
    scores: np.ndarray     # (N,)
    classes: np.ndarray    # (N,) int
    masks: torch.Tensor | None
    embeddings: np.ndarray | None = None  # (N,D) unit length
    clean: np.ndarray | None = None       # (N,) bool: overlaps no other detection (its look is its own)

    @classmethod
    def of(cls, dets: Detections, clean_iou: float = 0.1) -> "FrameDetections":
        boxes = dets.boxes.detach().float().cpu().numpy().reshape(-1, 4)
        emb = None if dets.embeddings is None else dets.embeddings.detach().float().cpu().numpy()
        clean = None
        if emb is not None:
            iou = box_iou(boxes, boxes)
            np.fill_diagonal(iou, 0.0)
            clean = (iou < clean_iou).all(1) if len(boxes) else np.zeros(0, bool)
        return cls(boxes, dets.scores.detach().float().cpu().numpy(), dets.classes.detach().cpu().numpy().astype(np.int64),
                   dets.masks, emb, clean)

    def look(self, k: int) -> np.ndarray | None:
        """Detection k's embedding where it can stand for the object alone, else None."""
        return self.embeddings[k] if self.embeddings is not None and self.clean[k] else None

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
        fps = fps if fps > 0 else 30.0
        self.buffer = max(1, int(round(self.config.lost_seconds * fps)))
        self.look_buffer = max(self.buffer, int(round(self.config.reid_seconds * fps)))
        self.tracks: list[Track] = []
        self.frame: int | None = None
        self.next_id = 1
        self.counts = TrackCounts()

    def update(self, dets: Detections, frame: int) -> TrackedDetections:
        if self.frame is not None and frame <= self.frame:
            raise ValueError(f"tracker: frame {frame} after frame {self.frame}; frames must come in increasing order")
        dt = 1 if self.frame is None else frame - self.frame
        first, self.frame = self.frame is None, frame
        self._retire(frame)
        self._predict(dt)
        d = FrameDetections.of(dets, self.config.clean_iou)
        matches = self._associate(d, dt)
        self._apply(d, matches, frame)
        seen = [(self.tracks[t], k) for t, k in matches.items()]
        seen += self._start_tracks(d, set(matches.values()), frame, first)
        self._confirm()
        return self._output(dets, seen)

    def _predict(self, dt: float) -> None:
        if not self.tracks:
            return
        mean, cov = kalman.predict(np.stack([t.mean for t in self.tracks]), np.stack([t.cov for t in self.tracks]),
                                   float(dt), self.config.noise)
        for t, m, c in zip(self.tracks, mean, cov):
            t.mean, t.cov = m, c

    def _boxes(self, tracks: list[int]) -> np.ndarray:
        return np.stack([self.tracks[t].box for t in tracks]) if tracks else np.zeros((0, 4))

    def _similarity(self, tracks: list[int], d: FrameDetections, dets: np.ndarray) -> np.ndarray:
        """(T,D) IoU of predicted and detected boxes. Where the boxes are ambiguous (crossing
        objects), it is weighed by how well the pair fits the track's motion and size, and
        blended with the IoU of the track's last mask moved to its predicted place. Lowered
        where the classes disagree."""
        cfg = self.config
        sim = box_iou(self._boxes(tracks), d.boxes[dets])
        if not sim.size:
            return sim
        amb = ambiguous_pairs(sim, cfg.ambiguous_iou)
        if amb.any():
            mean = np.stack([self.tracks[t].mean for t in tracks])
            cov = np.stack([self.tracks[t].cov for t in tracks])
            dist = kalman.gating_distance(mean, cov, kalman.xyxy_to_cxcywh(d.boxes[dets]), cfg.noise)
            sim = np.where(amb, sim * np.exp(-dist / (2 * cfg.recover_gate)), sim)
            if d.masks is not None:
                for i, j in zip(*np.nonzero(amb)):
                    sim[i, j] = self._blend_mask(sim[i, j], self.tracks[tracks[i]], d, int(dets[j]))
            sim = self._rank_looks(sim, amb, tracks, d, dets)
        agree = class_agreement([self.tracks[t].votes for t in tracks], d.classes[dets], cfg.class_share)
        return np.where(agree, sim, sim * cfg.class_penalty)

    def _blend_mask(self, sim: float, track: Track, d: FrameDetections, k: int) -> float:
        if track.mask is None:
            return sim
        moved = (int(round(track.box[0])), int(round(track.box[1])))  # the mask follows its box's corner
        w = self.config.mask_weight
        return (1 - w) * sim + w * shifted_mask_iou(track.mask[0], moved, *d.mask(k))

    def _rank_looks(self, sim: np.ndarray, amb: np.ndarray, tracks: list[int], d: FrameDetections,
                    dets: np.ndarray) -> np.ndarray:
        """Where a detection is ambiguous between tracks, lower the pairs of the tracks that look
        clearly less like it than another of them does. Relative, not absolute: to a detector's
        features all people look much alike (cosines of 0.8-0.95 between different ones), yet the
        right track's look is the nearest for 96-99 % of detections."""
        cfg = self.config
        if d.embeddings is None:
            return sim
        looks = [self.tracks[t].look for t in tracks]
        for j in np.nonzero(amb.any(0))[0]:
            rows = [i for i in np.nonzero(amb[:, j])[0] if looks[i] is not None]
            if len(rows) < 2:
                continue
            alike = np.array([float(looks[i] @ d.embeddings[dets[j]]) for i in rows])
            for i, a in zip(rows, alike):
                if a < alike.max() - cfg.look_gap:
                    sim[i, j] *= cfg.look_penalty
        return sim

    def _match(self, tracks: list[int], d: FrameDetections, dets: np.ndarray, minimum: float) -> list[tuple[int, int]]:
        """Assign tracks (indices into self.tracks) to dets (indices into d); returns pairs of those indices."""
        if not tracks or not len(dets):
            return []
        return [(tracks[i], int(dets[j])) for i, j in assign(self._similarity(tracks, d, dets), minimum)]

    def _recover(self, tracks: list[int], d: FrameDetections, dets: np.ndarray) -> list[tuple[int, int]]:
        """Lost tracks against the detections nobody took: the motion-gated Mahalanobis distance
        of box and size, one of the track's classes only (no overlap is left to vouch for the pair)."""
        if not tracks or not len(dets):
            return []
        mean = np.stack([self.tracks[t].mean for t in tracks])
        cov = np.stack([self.tracks[t].cov for t in tracks])
        dist = kalman.gating_distance(mean, cov, kalman.xyxy_to_cxcywh(d.boxes[dets]), self.config.noise)
        same = class_agreement([self.tracks[t].votes for t in tracks], d.classes[dets], self.config.class_share)
        same &= ~self._looks_differ(tracks, d, dets)
        sim = np.where(same & (dist <= self.config.recover_gate), 1.0 / (1.0 + dist), 0.0)
        return [(tracks[i], int(dets[j])) for i, j in assign(sim, 1e-9)]

    def _associate(self, d: FrameDetections, dt: int) -> dict[int, int]:
        """track index -> detection index for this frame (dt: frames since the last update)."""
        cfg = self.config
        matches: dict[int, int] = {}

        def free(tracks, dets):
            taken = set(matches.values())
            return [t for t in tracks if t not in matches], np.array([k for k in dets if k not in taken], int)

        confirmed = [t for t, tr in enumerate(self.tracks) if tr.status == CONFIRMED]
        tentative = [t for t, tr in enumerate(self.tracks) if tr.status == TENTATIVE]
        high = np.nonzero(d.scores >= cfg.high_score)[0]
        low = np.nonzero((d.scores >= cfg.low_score) & (d.scores < cfg.high_score))[0]
        # tracks lost for long are found by motion only (their predicted box has drifted)
        by_overlap = [t for t in confirmed if self.tracks[t].missed(self.frame) <= dt + cfg.lost_iou_frames]
        matches.update(self._match(by_overlap, d, high, cfg.match_iou))
        left, low = free(by_overlap, low)
        matches.update(self._match(left, d, low, cfg.low_match_iou))
        left, high = free([t for t in confirmed if self.tracks[t].missed(self.frame) <= self.buffer], high)
        matches.update(self._recover(left, d, high))
        # tentative tracks take what is left of the detections able to start one
        _, births = free([], np.nonzero(d.scores >= cfg.birth_score)[0])
        matches.update(self._match(tentative, d, births, cfg.match_iou))
        return matches

    def _apply(self, d: FrameDetections, matches: dict[int, int], frame: int) -> None:
        """Correct the matched tracks, mark the others missed."""
        for t, k in matches.items():
            self.tracks[t].take(d.boxes[k], float(d.scores[k]), int(d.classes[k]), frame, self.config.noise)
            self.tracks[t].see(d.look(k), self.config.look_alpha)
            if d.masks is not None:
                self.tracks[t].mask = d.mask(k)
        for t, track in enumerate(self.tracks):
            if t not in matches:
                track.miss()

    def _start_tracks(self, d: FrameDetections, taken: set[int], frame: int, first: bool) -> list[tuple[Track, int]]:
        """Tentative tracks from the detections nobody took, except second boxes on an object
        already tracked (another class, or a part of it)."""
        cfg = self.config
        started, kept = [], sorted(taken)
        for k in np.nonzero(d.scores >= cfg.birth_score)[0]:
            if k in taken or self._duplicate(d, int(k), kept):
                continue
            track = Track.start(d.boxes[k], float(d.scores[k]), int(d.classes[k]), frame, cfg.noise)
            track.mask = d.mask(int(k))
            track.see(d.look(int(k)), cfg.look_alpha)
            if first and d.scores[k] >= cfg.high_score:  # nothing to confirm against on a source's first frame
                track.hits, track.evidence = cfg.confirm_hits, cfg.confirm_evidence
            self.tracks.append(track)
            started.append((track, int(k)))
            kept.append(int(k))
        return started

    def _duplicate(self, d: FrameDetections, k: int, kept: list[int]) -> bool:
        """Whether detection k mostly covers one already kept this frame: by box, and where
        masks exist by mask too (two objects can share a box, not a mask)."""
        if not kept:
            return False
        iou = box_iou(d.boxes[k:k + 1], d.boxes[kept])[0]
        close = [j for j, v in zip(kept, iou) if v >= self.config.duplicate_iou]
        if d.masks is None or not close:
            return bool(close)
        return any(shifted_mask_iou(*d.mask(k), *d.mask(j)) >= 0.5 for j in close)

    def _retire(self, frame: int) -> None:
        """Give up the tracks lost for longer than the buffer (before matching: a stream's gap
        can be longer than the buffer)."""
        kept = [t for t in self.tracks if t.status != CONFIRMED or t.missed(frame) <= self.buffer
                or (t.look is not None and t.missed(frame) <= self.look_buffer)]
        self.counts.ended += len(self.tracks) - len(kept)
        self.tracks = kept

    def _confirm(self) -> None:
        """Give ids to the tentative tracks with enough evidence (the id of a lost track whose
        motion leads to it, if any); drop those that missed a frame."""
        cfg, kept = self.config, []
        for t in self.tracks:
            if t.status == TENTATIVE and t.hits >= cfg.confirm_hits and t.evidence >= cfg.confirm_evidence:
                lost = self._lost_match(t)
                if lost is not None:
                    t.track_id, t.first_frame = lost.track_id, lost.first_frame
                    for c, v in lost.votes.items():
                        t.votes[c] = t.votes.get(c, 0.0) + v
                    if lost.look is not None:  # the id's look goes on, freshened by the new frames
                        t.see(lost.look, 0.5)
                    lost.status = MERGED
                else:
                    t.track_id = self.next_id
                    self.next_id += 1
                    self.counts.started += 1
                t.status = CONFIRMED
            if t.status == TENTATIVE and t.hits == 0:
                continue  # a new track that missed a frame was noise
            kept.append(t)
        self.tracks = [t for t in kept if t.status != MERGED]
        self.counts.alive = sum(t.status == CONFIRMED for t in self.tracks)

    def _lost_match(self, new: Track) -> Track | None:
        """The lost track (unseen since before `new` began, sharing its classes) nearest to `new`
        by its predicted motion, within the recovery gate. The class test is looser than
        class_share: a new track's few frames often carry the class the detector gives the object
        less often (a partly hidden object flickers between two), and the motion gate still decides."""
        cfg = self.config
        lost = [t for t in self.tracks if t.status == CONFIRMED and t.hits == 0 and t.last.frame < new.first_frame]
        by_look = self._lost_by_look(new, lost)
        if by_look is not None:
            return by_look
        lost = [t for t in lost if t.missed(self.frame) <= self.buffer
                and vote_overlap(t.votes, new.votes) >= cfg.lost_class_overlap
                and not (t.look is not None and new.look is not None and float(t.look @ new.look) < cfg.look_veto)]
        if not lost:
            return None
        dist = kalman.gating_distance(np.stack([t.mean for t in lost]), np.stack([t.cov for t in lost]),
                                      new.mean[None, :4], self.config.noise)[:, 0]
        best = int(np.argmin(dist))
        return lost[best] if dist[best] <= self.config.recover_gate else None

    def _lost_by_look(self, new: Track, lost: list[Track]) -> Track | None:
        """The lost track that looks like `new`, clearly more than any other, whatever its motion
        and class since (an object hidden for seconds can come back anywhere, and as another class)."""
        cand = [t for t in lost if t.look is not None]
        if new.look is None or not cand:
            return None
        sims = np.array([float(t.look @ new.look) for t in cand])
        order = np.argsort(-sims)
        best = sims[order[0]]
        second = sims[order[1]] if len(cand) > 1 else -1.0
        ok = best >= self.config.reid_similarity and best - second >= self.config.reid_margin
        return cand[order[0]] if ok else None

    def _looks_differ(self, tracks: list[int], d: FrameDetections, dets: np.ndarray) -> np.ndarray:
        """(T,D) bool: the track's look and the detection's embedding are clearly not alike."""
        out = np.zeros((len(tracks), len(dets)), bool)
        if d.embeddings is None:
            return out
        for i, t in enumerate(tracks):
            if self.tracks[t].look is not None:
                out[i] = d.embeddings[dets] @ self.tracks[t].look < self.config.look_veto
        return out

    def _output(self, dets: Detections, seen: list[tuple[Track, int]]) -> TrackedDetections:
        """The confirmed tracks seen in this frame, with the detection's box, score and mask."""
        rows = sorted(((tr, k) for tr, k in seen if tr.status == CONFIRMED), key=lambda r: r[0].track_id)
        idx = torch.tensor([k for _, k in rows], dtype=torch.long, device=dets.boxes.device)
        return TrackedDetections(
            boxes=dets.boxes[idx], scores=dets.scores[idx],
            classes=torch.tensor([tr.cls for tr, _ in rows], dtype=torch.int64, device=dets.classes.device),
            masks=None if dets.masks is None else dets.masks[idx],
            track_ids=torch.tensor([tr.track_id for tr, _ in rows], dtype=torch.int64), frame=self.frame)
