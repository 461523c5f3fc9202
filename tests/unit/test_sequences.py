"""The synthetic MOT sequence generator on the bundled coco-mini: deterministic, ground truth in
MOT format with visibility, a readable video."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.sequences import SEQUENCES, SequenceSpec, Sprite, find_coco_source, load_sprites, render, write_sequence
from engine.eval.mot import read_mot

SPEC = SequenceSpec("t", seed=3, frames=40, size=(160, 224), objects=3, arrivals=1, departures=1, crossings=1,
                    height=(40, 70), speed=(2.0, 5.0))


@pytest.fixture(scope="module")
def pool():
    return load_sprites(*find_coco_source(None))


def test_objects_are_real_cut_outs_and_scenes_empty(pool):
    sprites, scenes = pool
    assert len(sprites) >= 10 and scenes
    for s in sprites:
        assert s.image.shape[:2] == s.mask.shape and 0.3 < s.mask.mean() <= 1.0 and 0 <= s.cls < 80
        assert "#" in s.source  # file_name#annotation_id


def test_same_seed_same_sequence(pool):
    a, b = render(SPEC, *pool), render(SPEC, *pool)
    assert a.gt == b.gt and all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    c = render(SequenceSpec(**{**SPEC.__dict__, "seed": 4}), *pool)
    assert c.gt != a.gt


def test_ground_truth_rows(pool):
    seq = render(SPEC, *pool)
    gt = np.array(seq.gt, dtype=np.float64)
    h, w = SPEC.size
    assert gt[:, 0].min() == 1 and gt[:, 0].max() == SPEC.frames
    assert (gt[:, 2] >= 0).all() and (gt[:, 3] >= 0).all()
    assert (gt[:, 2] + gt[:, 4] <= w).all() and (gt[:, 3] + gt[:, 5] <= h).all()  # clipped to the frame
    assert ((gt[:, 7] >= 0) & (gt[:, 7] <= 1)).all()
    for f in range(1, SPEC.frames + 1):
        ids = gt[gt[:, 0] == f, 1]
        assert len(ids) == len(set(ids))
    assert len(np.unique(gt[:, 1])) == SPEC.objects + SPEC.arrivals
    assert (gt[:, 7] < 1).any()  # something is hidden or cut by the frame at some point
    # the late arrival is absent from frame 1 and enters later
    assert len(gt[gt[:, 0] == 1]) == SPEC.objects


def test_visibility_is_the_share_of_the_object_drawn(tmp_path):
    """Solid squares of distinct colours over a black scene: in every frame, an object's
    visibility is the count of its colour's pixels over its full area."""
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    sprites = [Sprite(np.full((30, 30, 3), c, np.uint8), np.ones((30, 30), bool), 0, f"square{k}")
               for k, c in enumerate(colours)]
    scene = tmp_path / "black.png"
    cv2.imwrite(str(scene), np.zeros((160, 224, 3), np.uint8))
    spec = SequenceSpec("squares", seed=5, frames=60, size=(160, 224), objects=3, crossings=1, height=(40, 40))
    seq = render(spec, sprites, [scene])
    side = 40  # every square is scaled to 40 px
    checked = hidden = 0
    for f, tid, x, y, w, h, k, vis in seq.gt:
        if (w, h) != (side, side):
            continue  # cut by the frame's edge
        img = seq.frames[f - 1][y:y + h, x:x + w]
        own = colours[int(seq.sources[tid - 1].removeprefix("square"))]
        assert vis * side * side == pytest.approx(int((img == np.array(own, np.uint8)).all(-1).sum()))
        checked += 1
        hidden += vis < 1
    assert checked > 100 and hidden > 0


def test_written_sequence_reads_back(pool, tmp_path):
    seq = render(SPEC, *pool)
    folder = write_sequence(seq, tmp_path)
    cap = cv2.VideoCapture(str(folder / "t.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == SPEC.frames
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(SPEC.fps)
    ok, img = cap.read()
    assert ok and img.shape == (*SPEC.size, 3)
    cap.release()
    gt = read_mot(folder / "gt" / "gt.txt")
    assert len(gt) == len(seq.gt) and (gt.conf == 1).all()
    np.testing.assert_allclose(gt.visibility, [r[7] for r in seq.gt], atol=1e-4)
    assert "frameRate=25.0" in (folder / "seqinfo.ini").read_text()


def test_benchmark_sequences_are_distinct():
    assert len({s.seed for s in SEQUENCES.values()}) == len(SEQUENCES)
