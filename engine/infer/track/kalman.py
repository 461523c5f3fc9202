"""A constant-velocity Kalman filter for boxes in image pixels, vectorised over tracks.

State (8,): cx, cy, w, h and their velocities in pixels per frame; measurement (4,): cx, cy, w, h.
The noise scales with the box's own size (a 300-px object moves and jitters more in pixels than a
30-px one). Time steps are in frames and may exceed one: a stream that drops frames predicts over
the whole gap in one step."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHI2_95_4DOF = 9.4877  # gate for the 4-dof measurement distance


@dataclass(frozen=True)
class MotionNoise:
    """Standard deviations as fractions of the box's size (w for x-terms, h for y-terms)."""

    position: float = 1 / 20      # process noise on the box per frame
    velocity: float = 1 / 80      # process noise on its velocity per frame (allows bounces and turns)
    measurement: float = 1 / 20   # detector jitter of a box edge
    init_velocity: float = 1 / 4  # unknown speed of a new track


def _scales(boxes: np.ndarray) -> np.ndarray:
    """(N,4) cxcywh -> (N,4) [w, h, w, h]: the size each term's noise is relative to."""
    wh = np.maximum(boxes[:, 2:4], 1.0)
    return np.concatenate([wh, wh], axis=1)


def xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def initiate(z: np.ndarray, noise: MotionNoise) -> tuple[np.ndarray, np.ndarray]:
    """z: (N,4) cxcywh -> mean (N,8), covariance (N,8,8) with zero velocity, wide velocity variance."""
    s = _scales(z)
    std = np.concatenate([2 * noise.measurement * s, noise.init_velocity * s], axis=1)
    mean = np.concatenate([z, np.zeros_like(z)], axis=1)
    return mean, np.stack([np.diag(v) for v in std ** 2])


def predict(mean: np.ndarray, cov: np.ndarray, dt: float, noise: MotionNoise) -> tuple[np.ndarray, np.ndarray]:
    """Advance (N,8) means and (N,8,8) covariances by dt frames. Process noise grows with dt
    (random-walk velocity: position variance ~ dt^3, velocity variance ~ dt)."""
    if len(mean) == 0:
        return mean, cov
    F = np.eye(8)
    F[:4, 4:] = dt * np.eye(4)
    mean = mean @ F.T
    mean[:, 2:4] = np.maximum(mean[:, 2:4], 1.0)  # a shrinking box stops at one pixel
    s = _scales(mean[:, :4])
    qp = (noise.position * s) ** 2 * dt + (noise.velocity * s) ** 2 * dt ** 3 / 3
    qv = (noise.velocity * s) ** 2 * dt
    qpv = (noise.velocity * s) ** 2 * dt ** 2 / 2
    Q = np.zeros_like(cov)
    idx = np.arange(4)
    Q[:, idx, idx], Q[:, idx + 4, idx + 4] = qp, qv
    Q[:, idx, idx + 4] = Q[:, idx + 4, idx] = qpv
    return mean, F @ cov @ F.T + Q


def project(mean: np.ndarray, cov: np.ndarray, noise: MotionNoise,
            scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted measurement (N,4) and its covariance (N,4,4) with the detector's noise added,
    that noise's variance multiplied by `scale` (N,) where a measurement is less trustworthy."""
    s = _scales(mean[:, :4])
    r = (noise.measurement * s) ** 2
    if scale is not None:
        r = r * scale[:, None]
    R = np.zeros((len(mean), 4, 4))
    R[:, np.arange(4), np.arange(4)] = r
    return mean[:, :4].copy(), cov[:, :4, :4] + R


def measurement_scale(confidence: np.ndarray) -> np.ndarray:
    """Variance factor of a detection: the weaker its score, the noisier the measurement."""
    return 1.0 + 3.0 * (1.0 - np.clip(confidence, 0.0, 1.0))


def update(mean: np.ndarray, cov: np.ndarray, z: np.ndarray, noise: MotionNoise,
           scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Correct (N,8) states with (N,4) cxcywh measurements, one per state; `scale` as in project."""
    zp, S = project(mean, cov, noise, scale)
    PHt = cov[:, :, :4]                                 # P H^T with H = [I 0]
    K = np.linalg.solve(S, PHt.transpose(0, 2, 1)).transpose(0, 2, 1)  # (N,8,4)
    mean = mean + np.einsum("nij,nj->ni", K, z - zp)
    cov = cov - K @ PHt.transpose(0, 2, 1)
    return mean, cov


def gating_distance(mean: np.ndarray, cov: np.ndarray, z: np.ndarray, noise: MotionNoise) -> np.ndarray:
    """Squared Mahalanobis distance (T,D) of every measurement z (D,4) from every track's
    predicted measurement; chi-square with 4 dof for a true match."""
    if len(mean) == 0 or len(z) == 0:
        return np.zeros((len(mean), len(z)))
    zp, S = project(mean, cov, noise)
    d = z[None, :, :] - zp[:, None, :]                  # (T,D,4)
    L = np.linalg.cholesky(S)                            # (T,4,4)
    sol = np.linalg.solve(L[:, None], d[..., None])[..., 0]
    return (sol ** 2).sum(-1)
