"""MOT files and tracking metrics: the format written and read back, errors that name the line,
and MOTA / IDF1 / HOTA / ID switches on a case worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.eval.mot import MotFileError, MotWriter, evaluate, read_mot
from mot_case import GT, TRACKS


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_metrics_on_a_hand_computed_case(tmp_path):
    m = evaluate(read_mot(write(tmp_path, "gt.txt", GT)), read_mot(write(tmp_path, "t.txt", TRACKS)))
    # 8 ground-truth boxes: 7 matched, 1 missed, 1 false positive, 1 identity switch
    assert (m.tp, m.fn, m.fp, m.id_switches) == (7, 1, 1, 1)
    assert m.mota == pytest.approx(1 - (1 + 1 + 1) / 8)
    # best one-to-one id pairing: A-10 (2 boxes) and B-20 (3); IDF1 = 2*5 / (8 gt + 8 tracker boxes)
    assert m.idf1 == pytest.approx(10 / 16)
    # matched boxes are exact (IoU 1), so every HOTA threshold sees the same matches:
    # DetA = 7 / (7 + 1 + 1); AssA = (2 * 2/4 + 2 * 2/4 + 3 * 3/4) / 7 (per-match TPA/(TPA+FNA+FPA))
    det_a, ass_a = 7 / 9, (1 + 1 + 2.25) / 7
    assert m.deta == pytest.approx(det_a)
    assert m.assa == pytest.approx(ass_a)
    assert m.hota == pytest.approx(math.sqrt(det_a * ass_a))
    # A is followed in 4/4 frames (> 80 %: mostly tracked), B in 3/4 (partly)
    assert (m.mostly_tracked, m.partly_tracked, m.mostly_lost) == (1, 1, 0)
    assert (m.gt_ids, m.tracker_ids, m.frames) == (2, 4, 4)


def test_perfect_tracks_score_one(tmp_path):
    gt = read_mot(write(tmp_path, "gt.txt", GT))
    m = evaluate(gt, gt)
    assert (m.mota, m.idf1, m.hota, m.id_switches, m.fp, m.fn) == (1.0, 1.0, pytest.approx(1.0), 0, 0, 0)


def test_ignored_ground_truth_is_neither_missed_nor_a_false_positive(tmp_path):
    """A ground-truth row with consider flag 0 (or below --min-vis) drops out, and so does the
    tracker box on it: MOT17's distractor rule."""
    gt_text = GT.replace("2,2,296,204,40,40,1,0,0.8", "2,2,296,204,40,40,0,0,0.8")
    m = evaluate(read_mot(write(tmp_path, "gt.txt", gt_text)), read_mot(write(tmp_path, "t.txt", TRACKS)))
    assert (m.tp, m.fn, m.fp) == (6, 1, 1)
    by_vis = evaluate(read_mot(write(tmp_path, "gt2.txt", GT)), read_mot(tmp_path / "t.txt"), min_visibility=0.9)
    assert (by_vis.tp, by_vis.fn, by_vis.fp) == (4, 0, 1)  # all of B (visibility 0.8) is ignored


def test_mot_writer_format_and_round_trip(tmp_path):
    w = MotWriter(tmp_path / "out.txt")
    w.add(0, np.array([3, 7]), np.array([[10.0, 20.0, 60.5, 100.0], [0.0, 0.0, 5.0, 5.0]]), np.array([0.91, 0.3]),
          np.array([0, 2]))
    w.add(4, np.array([3]), np.array([[12.0, 21.0, 62.0, 101.0]]), np.array([0.8]), np.array([0]))
    w.close()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    # frame,id,x,y,w,h,conf,class,-1 with frames from 1
    assert lines[0] == "1,3,10.00,20.00,50.50,80.00,0.9100,0,-1"
    assert lines[2] == "5,3,12.00,21.00,50.00,80.00,0.8000,0,-1"
    t = read_mot(tmp_path / "out.txt")
    assert t.frames.tolist() == [1, 1, 5] and t.ids.tolist() == [3, 7, 3] and t.classes.tolist() == [0, 2, 0]
    np.testing.assert_allclose(t.boxes[0], [10, 20, 50.5, 80])
    assert t.visibility.tolist() == [1.0, 1.0, 1.0]  # -1 reads as fully visible


@pytest.mark.parametrize("text, says", [
    ("1,1,10,10,5\n", "t.txt:1: 5 fields"),
    ("1,1,10,10,5,5\n0,1,10,10,5,5\n", "t.txt:2: frame 0"),
    ("1,1,10,10,5,5\n1,x,10,10,5,5\n", "t.txt:2: not a number"),
    ("2,4,10,10,5,5\n2,4,11,10,5,5\n", "t.txt:2: id 4 twice in frame 2 (first on line 1)"),
    ("1,1,10,10,-5,5\n", "t.txt:1: negative box size"),
])
def test_bad_mot_lines_are_named(tmp_path, text, says):
    with pytest.raises(MotFileError, match=says.replace("(", r"\(").replace(")", r"\)")):
        read_mot(write(tmp_path, "t.txt", text))


def test_missing_mot_file(tmp_path):
    with pytest.raises(MotFileError, match="no such MOT file"):
        read_mot(tmp_path / "nope.txt")
