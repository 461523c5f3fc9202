"""One tracked object: its Kalman state, its class votes, its last mask and its lifecycle."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import engine.infer.track.kalman as kalman
from engine.infer.track.kalman import MotionNoise

TENTATIVE, CONFIRMED, MERGED = "tentative", "confirmed", "merged"  # MERGED: its id went on in another track


@dataclass
class Observation:
    """The filter's state right after a detection was taken in, kept to re-run the filter along a
    straight path when the track is found again after a gap (the velocity it predicted with while
    lost came from the last few, often partly occluded, boxes)."""

    frame: int
    z: np.ndarray        # (4,) cxcywh
    mean: np.ndarray     # (8,)
    cov: np.ndarray      # (8,8)


@dataclass
class Track:
    mean: np.ndarray                 # (8,) cx, cy, w, h, vx, vy, vw, vh
    cov: np.ndarray                  # (8,8)
    last: Observation
    score: float
    votes: dict[int, float] = field(default_factory=dict)  # class -> summed score
    track_id: int = 0                # 0 until confirmed
    status: str = TENTATIVE
    hits: int = 1                    # consecutive frames with a detection
    evidence: float = 0.0            # summed scores of those frames
    first_frame: int = 0
    mask: tuple[np.ndarray, tuple[int, int]] | None = None  # last mask cropped to its box, (x0, y0)
    look: np.ndarray | None = None   # unit-length running mean of its clean embeddings

    @classmethod
    def start(cls, box: np.ndarray, score: float, cls_: int, frame: int, noise: MotionNoise) -> "Track":
        z = kalman.xyxy_to_cxcywh(box[None])
        mean, cov = kalman.initiate(z, noise)
        return cls(mean[0], cov[0], Observation(frame, z[0], mean[0], cov[0]), score, {cls_: score},
                   evidence=score, first_frame=frame)

    @property
    def cls(self) -> int:
        return max(self.votes, key=self.votes.get)

    @property
    def box(self) -> np.ndarray:
        """(4,) xyxy of the current (predicted or corrected) state."""
        return kalman.cxcywh_to_xyxy(self.mean[None, :4])[0]

    def missed(self, frame: int) -> int:
        """Frames since the last detection."""
        return frame - self.last.frame

    def take(self, box: np.ndarray, score: float, cls_: int, frame: int, noise: MotionNoise) -> None:
        """Correct the state with a matched detection. After a gap the filter is re-run from the
        last observation along the straight line to this one."""
        z = kalman.xyxy_to_cxcywh(box[None])[0]
        gap = frame - self.last.frame
        scale = kalman.measurement_scale(np.array([score]))
        if gap > 1 and self.hits == 0:
            mean, cov = self.last.mean[None], self.last.cov[None]
            for k in range(1, gap + 1):
                mean, cov = kalman.predict(mean, cov, 1.0, noise)
                zk = self.last.z + (z - self.last.z) * (k / gap)
                mean, cov = kalman.update(mean, cov, zk[None], noise, scale)
        else:
            mean, cov = kalman.update(self.mean[None], self.cov[None], z[None], noise, scale)
        self.mean, self.cov = mean[0], cov[0]
        self.last = Observation(frame, z, self.mean.copy(), self.cov.copy())
        self.score = score
        self.votes[cls_] = self.votes.get(cls_, 0.0) + score
        self.hits += 1
        self.evidence += score

    def see(self, embedding: np.ndarray | None, alpha: float) -> None:
        """Blend a detection's embedding into the look (None: nothing clean to learn from)."""
        if embedding is None:
            return
        look = embedding if self.look is None else alpha * self.look + (1 - alpha) * embedding
        self.look = look / max(float(np.linalg.norm(look)), 1e-12)

    def miss(self) -> None:
        """No detection this frame: stop the size from drifting while the object is not seen."""
        if self.hits:
            self.mean[6:8] = 0.0
        self.hits, self.evidence = 0, 0.0
