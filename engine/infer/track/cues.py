"""Association cues between tracks and detections, each a (T,D) matrix: box IoU, mask IoU of a
track's last mask moved to its predicted place, and class agreement."""
from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,4) x (D,4) xyxy -> (T,D) IoU in numpy: utils.boxes.box_iou's formula, kept here because
    the tracker's arrays are a few rows a frame, where torch's per-call cost doubled its time."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def ambiguous_pairs(iou: np.ndarray, overlap: float) -> np.ndarray:
    """(T,D) bool: pairs whose box overlap alone does not decide, because the track or the
    detection also overlaps another detection or track by at least `overlap`."""
    close = iou >= overlap
    crowded = (close.sum(1, keepdims=True) > 1) | (close.sum(0, keepdims=True) > 1)
    return close & crowded


def crop_mask(mask: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A frame-sized bool mask cut to its integer box: (crop, (x0, y0))."""
    h, w = mask.shape
    x0, y0 = int(np.clip(np.floor(box[0]), 0, w)), int(np.clip(np.floor(box[1]), 0, h))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0, w)), int(np.clip(np.ceil(box[3]), y0, h))
    return mask[y0:y1, x0:x1], (x0, y0)


def shifted_mask_iou(track_mask: np.ndarray, track_origin: tuple[int, int], det_mask: np.ndarray,
                     det_origin: tuple[int, int]) -> float:
    """IoU of two cropped bool masks placed at their origins (x0, y0) in one frame."""
    (tx, ty), (dx, dy) = track_origin, det_origin
    th, tw = track_mask.shape
    dh, dw = det_mask.shape
    x0, y0, x1, y1 = max(tx, dx), max(ty, dy), min(tx + tw, dx + dw), min(ty + th, dy + dh)
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int((track_mask[y0 - ty:y1 - ty, x0 - tx:x1 - tx] & det_mask[y0 - dy:y1 - dy, x0 - dx:x1 - dx]).sum())
    union = int(track_mask.sum()) + int(det_mask.sum()) - inter
    return inter / union if union else 0.0


def class_agreement(votes: list[dict[int, float]], det_classes: np.ndarray, share: float) -> np.ndarray:
    """(T,D) bool: the detection's class has at least `share` of the track's class votes (a
    detector's class for one object flickers between a few, so the majority alone is too strict)."""
    out = np.zeros((len(votes), len(det_classes)), bool)
    for i, v in enumerate(votes):
        total = sum(v.values())
        out[i] = [v.get(int(c), 0.0) >= share * total for c in det_classes]
    return out


def vote_overlap(a: dict[int, float], b: dict[int, float]) -> float:
    """How much two tracks' class distributions overlap (1: the same, 0: no class in common)."""
    ta, tb = sum(a.values()), sum(b.values())
    return sum(min(v / ta, b.get(c, 0.0) / tb) for c, v in a.items())
