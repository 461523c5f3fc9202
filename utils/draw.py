"""Drawing detections: semi-transparent instance masks, boxes, labels with scores."""
from __future__ import annotations

import cv2
import numpy as np

from utils.structures import Detections

PALETTE = np.array([[56, 56, 255], [151, 157, 255], [31, 112, 255], [29, 178, 255], [49, 210, 207], [10, 249, 72],
                    [23, 204, 146], [134, 219, 61], [52, 147, 26], [187, 212, 0], [168, 153, 44], [255, 194, 0],
                    [147, 69, 52], [255, 115, 100], [236, 24, 0], [255, 56, 132], [133, 0, 82], [255, 56, 203],
                    [200, 149, 255], [199, 55, 255]], np.uint8)


def color(cls: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in PALETTE[cls % len(PALETTE)])


def draw(image: np.ndarray, dets: Detections, names: list[str], line_width: int | None = None,
         hide_labels: bool = False, hide_conf: bool = False, alpha: float = 0.45,
         ids: list[int] | None = None) -> np.ndarray:
    """A copy of `image` (BGR) with the detections drawn; masks blended at `alpha`. With `ids`
    (one per detection, tracking) the colours follow the identities and the labels start with them."""
    out = image.copy()
    lw = line_width or max(round(sum(image.shape[:2]) / 2 * 0.003), 2)
    classes = dets.classes.tolist()
    keys = classes if ids is None else ids  # what picks each detection's colour
    if dets.masks is not None and len(dets):
        masks = dets.masks.cpu().numpy()
        overlay = out.copy()
        covered = np.zeros(masks.shape[1:], bool)
        h, w = covered.shape
        for m, c, box in zip(masks, keys, dets.boxes.tolist()):  # masks are cropped to their boxes
            x1, y1 = max(int(box[0]) - 1, 0), max(int(box[1]) - 1, 0)
            x2, y2 = min(int(box[2]) + 2, w), min(int(box[3]) + 2, h)
            sub = m[y1:y2, x1:x2]
            overlay[y1:y2, x1:x2][sub] = color(c)
            covered[y1:y2, x1:x2] |= sub
        out[covered] = cv2.addWeighted(overlay, alpha, out, 1 - alpha, 0)[covered]
    for k, (box, score, c) in enumerate(zip(dets.boxes.tolist(), dets.scores.tolist(), classes)):
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(out, p1, p2, color(keys[k]), lw, cv2.LINE_AA)
        if hide_labels:
            continue
        label = names[c] if c < len(names) else str(c)
        label = label if ids is None else f"{ids[k]} {label}"
        text = label if hide_conf else f"{label} {score:.2f}"
        fs = lw / 3
        (tw, th), _ = cv2.getTextSize(text, 0, fs, max(lw - 1, 1))
        top = p1[1] - th - 3 >= 0
        q2 = (p1[0] + tw, p1[1] - th - 3 if top else p1[1] + th + 3)
        cv2.rectangle(out, p1, q2, color(keys[k]), -1, cv2.LINE_AA)
        cv2.putText(out, text, (p1[0], p1[1] - 2 if top else p1[1] + th + 2), 0, fs, (255, 255, 255),
                    max(lw - 1, 1), cv2.LINE_AA)
    return out


def draw_trails(image: np.ndarray, trails: list[tuple[int, list[tuple[int, int]]]], line_width: int | None = None) -> None:
    """Draw in place each track's recent centres, (track id, points oldest first), in its colour."""
    lw = line_width or max(round(sum(image.shape[:2]) / 2 * 0.003), 2)
    for tid, points in trails:
        if len(points) > 1:
            cv2.polylines(image, [np.array(points, np.int32).reshape(-1, 1, 2)], False, color(tid), lw, cv2.LINE_AA)
