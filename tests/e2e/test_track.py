"""Tracking through the command lines: detect.py --track on a generated sequence written as a
video and as a folder of frames (ids, MOT file, JSON track_id, the printed counts), the sources
it refuses, a stream that drops frames, and val.py --task track on the case worked out by hand."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import detect
import val
from conftest import ROOT
from data.sequences import SequenceSpec, find_coco_source, load_sprites, render, write_sequence
from engine.eval.mot import evaluate, read_mot
from engine.infer.sources import Frame
from engine.infer.track import TRACKERS
from engine.infer.track.session import TrackingRun
from mot_case import GT, TRACKS
from utils.structures import Detections

# three objects on 320x240 over 60 frames, two sent to cross (test_tracker's occlusion sequence, shorter)
SPEC = SequenceSpec("occl", seed=6, frames=60, size=(240, 320), objects=3, crossings=1, height=(50, 90),
                    speed=(2.0, 4.0))


@pytest.fixture(scope="module")
def sequence():
    sprites, scenes = load_sprites(*find_coco_source(None))  # the bundled coco-mini objects
    return render(SPEC, sprites, scenes)


@pytest.fixture(scope="module")
def written(sequence, tmp_path_factory):
    """The sequence as occl/occl.mp4 + gt/gt.txt, and as frames/1.png ... 60.png (no zero padding:
    the frames must still come in numeric order)."""
    folder = write_sequence(sequence, tmp_path_factory.mktemp("seq"))
    (folder / "frames").mkdir()
    for i, img in enumerate(sequence.frames, 1):
        cv2.imwrite(str(folder / "frames" / f"{i}.png"), img)
    return folder


def track(weights, source, project, name, caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gradpath.detect"):
        rc = detect.main(["--weights", str(weights), "--source", str(source), "--track", "--conf-thres", "0.1",
                          "--save-txt", "--save-json", "--img", "320", "--project", str(project), "--name", name])
    return rc, caplog.text


def check_mot_file(path, frames: int) -> np.ndarray:
    """Every line frame,id,x,y,w,h,conf,class,-1 with frames 1..`frames`; the rows as an array."""
    lines = path.read_text().splitlines()
    assert lines
    rows = np.array([[float(v) for v in line.split(",")] for line in lines])
    assert rows.shape[1] == 9 and (rows[:, 8] == -1).all()
    assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= frames and (rows[:, 0] == rows[:, 0].astype(int)).all()
    assert (rows[:, 1] >= 1).all() and (rows[:, 4:6] > 0).all() and ((rows[:, 6] > 0) & (rows[:, 6] <= 1)).all()
    assert len({(f, i) for f, i in rows[:, :2].tolist()}) == len(rows)  # one box per id and frame
    assert (np.diff(rows[:, 0]) >= 0).all()  # written frame by frame
    return rows


@pytest.mark.slow
def test_track_a_video(official, written, tmp_path, caplog, capsys):
    """Ids through the crossing, the MOT file and the JSON agree, the counts are printed, the saved
    video keeps every frame, and val.py scores the MOT file as the library does."""
    rc, log = track(official / "yolov5n.pt", written / "occl.mp4", tmp_path, "video", caplog)
    assert rc == 0
    run = tmp_path / "video"
    rows = check_mot_file(run / "tracks" / "occl.txt", SPEC.frames)
    ids = sorted(set(rows[:, 1].astype(int).tolist()))
    assert f"tracks: {len(ids)} started, 0 ended, {len(ids)} alive (1 source(s))" in log

    results = json.loads((run / "predictions.json").read_text())
    assert results and all("track_id" in r for r in results)
    from_json = sorted((r["frame"] + 1, r["track_id"], *r["bbox"]) for r in results)
    np.testing.assert_allclose(np.array(from_json), rows[np.lexsort((rows[:, 1], rows[:, 0]))][:, :6], atol=0.01)

    cap = cv2.VideoCapture(str(run / "occl.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == SPEC.frames
    cap.release()

    gt, mot = written / "gt" / "gt.txt", run / "tracks" / "occl.txt"
    capsys.readouterr()
    assert val.main(["--task", "track", "--gt", str(gt), "--tracks", str(mot)]) == 0
    printed = capsys.readouterr().out
    metrics = evaluate(read_mot(gt), read_mot(mot))
    assert printed.strip() == metrics.table()
    # the objects yolov5n finds at 320 keep one id each: no switch, every id on one object
    assert metrics.id_switches == 0 and metrics.tracker_ids == len(ids) and metrics.mostly_tracked >= 1


@pytest.mark.slow
def test_track_a_folder_of_frames(official, written, tmp_path, caplog):
    """The folder is one sequence: frames counted in numeric name order, one MOT file named after it."""
    rc, log = track(official / "yolov5n.pt", written / "frames", tmp_path, "folder", caplog)
    assert rc == 0
    rows = check_mot_file(tmp_path / "folder" / "tracks" / "frames.txt", SPEC.frames)
    assert "tracks: " in log and "(1 source(s))" in log
    results = json.loads((tmp_path / "folder" / "predictions.json").read_text())
    assert {r["file_name"] for r in results} == {f"{int(f)}.png" for f in rows[:, 0]}
    assert all(r["file_name"] == f"{r['frame'] + 1}.png" for r in results)
    assert evaluate(read_mot(written / "gt" / "gt.txt"), read_mot(tmp_path / "folder" / "tracks" / "frames.txt")
                    ).id_switches == 0


def test_track_refuses_a_single_image(written, tmp_path):
    """The real script: one line on stderr, exit 2, no run folder (refused before the model loads)."""
    image = written / "frames" / "1.png"
    p = subprocess.run([sys.executable, str(ROOT / "detect.py"), "--weights", str(tmp_path / "none.pt"),
                        "--source", str(image), "--track", "--project", str(tmp_path / "runs")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"detect.py: error: --track: --source {image} is a single image; tracking needs a "
                                "video, a stream or a folder of frames")
    assert not (tmp_path / "runs").exists()


def test_track_refuses_a_folder_that_is_no_sequence(tmp_path, capsys):
    """coco-mini's images have many sizes: not one camera's frames."""
    images = ROOT / "datasets/coco-mini/images"
    rc = detect.main(["--weights", str(tmp_path / "none.pt"), "--source", str(images), "--track",
                      "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"detect.py: error: --track: --source {images} is no sequence of frames: its ")
    assert "different sizes" in err[0] and not (tmp_path / "runs").exists()


def test_tracker_flag_needs_track_and_names_a_known_tracker(capsys):
    assert detect.main(["--tracker", "bytetrack"]) == 2
    assert capsys.readouterr().err.strip() == "detect.py: error: --tracker bytetrack goes with --track"
    assert set(detect.TRACKERS) == set(TRACKERS)  # the parser's choices are the registry's names


def gt_detections(gt: np.ndarray, frame: int) -> Detections:
    """A detector that sees every object at least 30 % visible, boxes jittered by 2 %."""
    rows = gt[(gt[:, 0] == frame) & (gt[:, 7] >= 0.3)]
    rng = np.random.default_rng(frame)
    xywh = rows[:, 2:6] + rng.normal(0, 0.02, (len(rows), 4)) * rows[:, [4, 5, 4, 5]]
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(0.5 + 0.45 * rows[:, 7]).float(),
                      torch.tensor(rows[:, 6], dtype=torch.int64))


def test_a_stream_that_drops_frames_keeps_its_tracks(sequence, tmp_path):
    """Frames as a live stream hands them over (its frame counter goes on while frames are
    dropped): 12 frames lost, then the same ids go on, nothing ended, the MOT file has the gap."""
    gt = np.array(sequence.gt, dtype=np.float64)
    dropped = range(21, 33)  # 1-based frames the reader skipped
    run = TrackingRun("bytetrack", "rtsp://camera/1", tmp_path)
    seen: dict[int, dict[int, int]] = {}  # frame -> {gt id: track id}
    for f in [f for f in range(1, SPEC.frames + 1) if f not in dropped]:
        frame = Frame(sequence.frames[f - 1], "rtsp://camera/1", f - 1, True, 25.0)
        tracked = run.update(frame, gt_detections(gt, f))
        rows = gt[gt[:, 0] == f]
        tb = tracked.boxes.numpy()
        for gid, x, y, w, h in rows[:, [1, 2, 3, 4, 5]]:
            hit = np.nonzero((np.abs(tb[:, 0] - x) < 0.1 * w) & (np.abs(tb[:, 1] - y) < 0.1 * h))[0]
            if len(hit) == 1:
                seen.setdefault(f, {})[int(gid)] = int(tracked.track_ids[hit[0]])
    before = {g: t for f in range(15, 21) for g, t in seen.get(f, {}).items()}
    after = {g: t for f in range(33, 39) for g, t in seen.get(f, {}).items()}
    assert before and {g: after[g] for g in before if g in after} == {g: before[g] for g in after if g in before}
    assert len(set(before) & set(after)) >= 2
    assert run.counts().ended == 0
    (path,) = run.close()
    assert path.name == "rtsp_camera_1.txt"
    frames = set(read_mot(path).frames.tolist())
    assert not frames & set(dropped) and {20, 33} <= frames


def test_val_track_on_the_hand_computed_case(tmp_path, capsys):
    (tmp_path / "gt.txt").write_text(GT)
    (tmp_path / "t.txt").write_text(TRACKS)
    assert val.main(["--task", "track", "--gt", str(tmp_path / "gt.txt"), "--tracks", str(tmp_path / "t.txt")]) == 0
    head, values = capsys.readouterr().out.strip().splitlines()
    got = dict(zip(head.replace("GT ids", "GT_ids").split(), values.split()))
    # test_mot.py's arithmetic: MOTA 1 - 3/8, IDF1 10/16, one switch, one FP, one FN, A mostly tracked
    assert {k: got[k] for k in ("MOTA", "IDF1", "IDSW", "FP", "FN", "MT", "PT", "ML", "GT_ids", "ids")} == {
        "MOTA": "62.5", "IDF1": "62.5", "IDSW": "1", "FP": "1", "FN": "1", "MT": "1", "PT": "1", "ML": "0",
        "GT_ids": "2", "ids": "4"}


@pytest.mark.parametrize("argv, says", [
    (["--task", "track", "--gt", "gt.txt"], "val.py: error: --task track, --gt and --tracks go together"),
    (["--gt", "gt.txt", "--tracks", "t.txt"], "val.py: error: --task track, --gt and --tracks go together"),
    (["--task", "track", "--gt", "missing.txt", "--tracks", "t.txt"], "val.py: error: missing.txt: no such MOT file"),
])
def test_val_track_errors_in_one_line(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("1,1,0,0,10,10,1,0,-1\n")
    assert val.main(argv) == 2
    assert capsys.readouterr().err.strip() == says
