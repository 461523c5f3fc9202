"""A cheap appearance cue: a colour histogram of each detection's inner box (or mask) region,
kept per track as a running average, compared by the Bhattacharyya coefficient. It tells apart
objects that motion cannot (two people crossing) at a few microseconds a box."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AppearanceConfig:
    bins: tuple[int, int, int] = (8, 4, 4)   # hue, saturation, value
    inner: float = 0.2          # share of the box cut from each side (background sits at the edges)
    max_side: int = 48          # crops are subsampled to about this many pixels a side
    momentum: float = 0.9       # weight of a track's old histogram when a clean view comes in


def histograms(image: np.ndarray, boxes: np.ndarray, config: AppearanceConfig,
               masks: list[np.ndarray | None] | None = None) -> np.ndarray:
    """(N,4) xyxy boxes of a BGR frame -> (N,B) L1-normalised HSV histograms of their inner
    region (only the mask's pixels there, where a mask is given). A box with no pixels gets a
    uniform histogram (it matches nothing in particular)."""
    n_bins = int(np.prod(config.bins))
    out = np.full((len(boxes), n_bins), 1.0 / n_bins, np.float32)
    h, w = image.shape[:2]
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        dx, dy = (x2 - x1) * config.inner, (y2 - y1) * config.inner
        c0, r0 = int(np.clip(x1 + dx, 0, w)), int(np.clip(y1 + dy, 0, h))
        c1, r1 = int(np.clip(x2 - dx, c0, w)), int(np.clip(y2 - dy, r0, h))
        if c1 - c0 < 2 or r1 - r0 < 2:
            continue
        step = max(1, max(c1 - c0, r1 - r0) // config.max_side)
        crop = np.ascontiguousarray(image[r0:r1:step, c0:c1:step])
        sel = None
        if masks is not None and masks[k] is not None:
            mask, (mx, my) = masks[k]
            sel = np.zeros(crop.shape[:2], np.uint8)
            sub = mask[max(r0 - my, 0):max(r1 - my, 0):step, max(c0 - mx, 0):max(c1 - mx, 0):step]
            sel[:sub.shape[0], :sub.shape[1]] = sub
            if not sel.any():
                continue
        hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], sel, list(config.bins), [0, 180, 0, 256, 0, 256]).reshape(-1)
        total = hist.sum()
        if total > 0:
            out[k] = hist / total
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,B) x (D,B) histograms -> (T,D) Bhattacharyya coefficients in 0..1 (1: the same colours)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return np.sqrt(a) @ np.sqrt(b).T


def clean_views(boxes: np.ndarray, overlap: float) -> np.ndarray:
    """(N,) bool: boxes that no other box covers by more than `overlap` of their area (a view of
    the object alone, fit to update its track's histogram)."""
    n = len(boxes)
    if n < 2:
        return np.ones(n, bool)
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    np.fill_diagonal(inter, 0.0)
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 1e-9, None).prod(-1)
    return inter.max(1) / area <= overlap
