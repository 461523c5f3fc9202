"""The tracker's colour cue: histograms tell differently coloured objects apart, a clean view is one
no other box covers, and a track lost longer than the lost-track buffer gets its id back from
its colours alone (and only with the frames given)."""
from __future__ import annotations

import numpy as np
import torch

from engine.infer.track import Tracker, TrackerConfig
from engine.infer.track.appearance import AppearanceConfig, clean_views, histograms, similarity
from utils.structures import Detections

RED, BLUE = (40, 40, 220), (220, 90, 30)  # BGR


def scene(objects: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]]) -> np.ndarray:
    """A grey 240x320 frame with textured rectangles (x1, y1, x2, y2) of the given colours."""
    img = np.full((240, 320, 3), 120, np.uint8)
    rng = np.random.default_rng(0)
    for (x1, y1, x2, y2), bgr in objects:
        noise = rng.integers(-20, 21, (y2 - y1, x2 - x1, 3))
        img[y1:y2, x1:x2] = np.clip(np.array(bgr) + noise, 0, 255).astype(np.uint8)
    return img


def dets(boxes: list[tuple[int, int, int, int]]) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.full((len(boxes),), 0.9),
                      torch.zeros(len(boxes), dtype=torch.int64))


def test_histograms_tell_colours_apart():
    a, b = (20, 20, 80, 120), (200, 60, 260, 160)
    img = scene([(a, RED), (b, BLUE)])
    h = histograms(img, np.array([a, b], np.float64), AppearanceConfig())
    assert np.allclose(h.sum(1), 1.0)
    s = similarity(h, h)
    assert s[0, 0] > 0.99 and s[1, 1] > 0.99 and s[0, 1] < 0.3
    moved = scene([((30, 100, 90, 200), RED)])  # the red object elsewhere: the same colours
    assert similarity(histograms(moved, np.array([[30, 100, 90, 200]], np.float64), AppearanceConfig()), h[:1])[0, 0] > 0.95


def test_clean_views_are_boxes_no_other_covers():
    boxes = np.array([[0, 0, 100, 100], [90, 0, 190, 100], [300, 300, 350, 350]], np.float64)
    assert clean_views(boxes, 0.1).tolist() == [True, True, True]  # 10 % overlap each: still clean
    assert clean_views(boxes, 0.05).tolist() == [False, False, True]


def run_reappearance(with_frames: bool) -> tuple[int, int]:
    """A red and a blue object still for 20 frames; the red one gone for 5 s (125 frames at 25
    fps, past the 3 s buffer) then back at the other side of the frame. (its id before, after)."""
    tracker = Tracker(TrackerConfig(), fps=25.0)
    red, blue, back = (20, 20, 80, 120), (200, 120, 260, 220), (230, 10, 290, 110)
    ids = {}
    for f in range(20 + 125 + 10):
        objects = [(blue, BLUE)] + ([] if 20 <= f < 145 else [(back if f >= 145 else red, RED)])
        boxes = [b for b, _ in objects]
        out = tracker.update(dets(boxes), f, scene(objects) if with_frames else None)
        for box, tid in zip(out.boxes.tolist(), out.track_ids.tolist()):
            if abs(box[0] - red[0]) < 2 and f < 20:
                ids["before"] = tid
            if abs(box[0] - back[0]) < 2 and f >= 150:
                ids["after"] = tid
    return ids["before"], ids["after"]


def test_a_track_lost_past_the_buffer_is_found_again_by_its_colours():
    before, after = run_reappearance(with_frames=True)
    assert after == before
    before, after = run_reappearance(with_frames=False)  # boxes only: a new id
    assert after != before
