"""detect.py and export.py end to end: videos keep frames and fps, bad files are skipped and
reported, txt/json outputs parse back to the detections, ONNX matches PyTorch."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
from engine.infer.predictor import PredictOptions, Predictor
from engine.infer.sources import SourceError
from models.model import build_model
from utils.io import save_checkpoint

IMAGES = ROOT / "datasets/coco-mini/images"
LOW = {"conf_thres": 0.001, "max_det": 5}  # a random model: keep a few detections


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ROOT / "cfg/models/gp-n-seg.yaml")
    with torch.no_grad():  # spread a random model's scores apart so detections have no near-ties
        for conv in model.head.m:
            conv.weight.mul_(30.0)
            conv.bias.zero_()
    names = [f"c{i}" for i in range(80)]
    ckpt = {"model": model.state_dict(), "ema": None,
            "config": {"model": model.yaml, "nc": 80, "names": names, "category_ids": list(range(1, 81)),
                       "img_size": 128}}
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("w") / "best.pt")


def _run(weights, source, tmp_path, **kw) -> dict:
    opt = PredictOptions(weights=str(weights), source=str(source), img_size=128, project=str(tmp_path / "runs"),
                         **{**LOW, **kw})
    return Predictor(opt).run()


def test_video_keeps_frame_count_and_fps(weights, shared_data, tmp_path):
    src = shared_data / "videos/carphone_pristine.mp4"
    cap = cv2.VideoCapture(str(src))
    n, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    summary = _run(weights, src, tmp_path)
    out = cv2.VideoCapture(str(Path(summary["save_dir"]) / "carphone_pristine.mp4"))
    frames = 0
    while out.read()[0]:
        frames += 1
    assert summary["frames"] == n == frames and abs(out.get(cv2.CAP_PROP_FPS) - fps) < 0.01
    out.release()


def test_folder_with_corrupt_and_non_image_files(weights, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(IMAGES.iterdir())[:3]:
        shutil.copy(p, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt.md").write_text("hello")
    summary = _run(weights, folder, tmp_path)
    assert summary["images"] == 3 and summary["skipped"] == 2
    saved = sorted(p.name for p in Path(summary["save_dir"]).glob("*.jpg"))
    assert saved == sorted(p.name for p in sorted(IMAGES.iterdir())[:3])


def test_txt_and_json_parse_back_to_the_detections(weights, tmp_path):
    img = sorted(IMAGES.iterdir())[0]
    pred = Predictor(PredictOptions(weights=str(weights), source=str(img), img_size=128, **LOW))
    frame_img = cv2.imread(str(img))
    from engine.infer.sources import Frame

    dets = pred.infer([Frame(frame_img, str(img), 0, False)])[0]
    summary = _run(weights, img, tmp_path, save_txt=True, save_json=True, save_conf=True)
    run = Path(summary["save_dir"])
    lines = (run / "labels" / f"{img.stem}.txt").read_text().splitlines()
    results = json.loads((run / "predictions.json").read_text())
    assert len(results) == len(dets) == 5 and len(lines) <= 5
    h, w = frame_img.shape[:2]
    for r, box, score, cls in zip(results, dets.boxes.tolist(), dets.scores.tolist(), dets.classes.tolist()):
        x, y, bw, bh = r["bbox"]
        assert np.allclose([x, y, x + bw, y + bh], box, atol=0.01) and r["category_id"] == cls + 1
        assert abs(r["score"] - score) < 1e-4 and r["image_id"] == int(img.stem)
    visible = [k for k in range(len(dets)) if dets.masks[k].any()]  # empty masks have no polygon line
    assert len(lines) == len(visible)
    for line, k in zip(lines, visible):
        vals = line.split()
        cls, coords, conf = int(vals[0]), np.array(vals[1:-1], float).reshape(-1, 2), float(vals[-1])
        assert cls == int(dets.classes[k]) and abs(conf - float(dets.scores[k])) <= 1e-5 * max(conf, 1e-12) + 1e-12
        ys, xs = np.nonzero(dets.masks[k].numpy())  # the polygon outlines its mask
        px, py = coords[:, 0] * w, coords[:, 1] * h
        assert abs(px.min() - xs.min()) <= 1 and abs(px.max() - xs.max()) <= 1
        assert abs(py.min() - ys.min()) <= 1 and abs(py.max() - ys.max()) <= 1


def test_each_image_is_letterboxed_to_its_own_rectangle(weights):
    """As the official detect.py: img_size on the long side, the short side padded only to the
    next stride multiple; a batch holds consecutive images of one input shape."""
    from engine.infer.sources import Frame

    rng = np.random.default_rng(0)
    shapes = [(427, 640), (346, 500), (640, 427), (480, 640), (480, 640), (480, 640)]
    frames = [Frame(rng.integers(0, 255, (*hw, 3), dtype=np.uint8), f"{k}.jpg", 0, False)
              for k, hw in enumerate(shapes)]
    pred = Predictor(PredictOptions(weights=str(weights), source=str(IMAGES), img_size=640, batch_size=2, **LOW))
    groups = list(pred._batches(frames))
    assert [[f.path for f in b] for b in groups] == [["0.jpg", "1.jpg"], ["2.jpg"], ["3.jpg", "4.jpg"], ["5.jpg"]]
    inputs = [pred.preprocess(b) for b in groups]
    assert [tuple(x.shape) for x, _ in inputs] == [(2, 3, 448, 640), (1, 3, 640, 448), (2, 3, 480, 640),
                                                   (1, 3, 480, 640)]
    for (x, rps), group in zip(inputs, groups):  # batched, each image gets what it gets alone
        for k, f in enumerate(group):
            x1, rp1 = pred.preprocess([f])
            assert torch.equal(x[k], x1[0]) and rps[k] == rp1[0]
    pred.img_size = 128
    assert len(pred.infer(frames)) == len(frames)  # mixed shapes in one call run shape by shape


def test_missing_source_fails_clearly(weights, tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        _run(weights, tmp_path / "nope", tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "detect.py"), "--weights", str(weights), "--source",
                        str(tmp_path / "nope.jpg"), "--project", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "detect.py: error: --source" in r.stderr and not (tmp_path / "r").exists()


def test_onnx_export_matches_pytorch_and_detects_the_same(weights, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "export.py"), "--weights", str(weights), "--img-size", "128", "--dynamic",
                        "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    diff = float(re.search(r"max abs diff ([\d.e+-]+)", r.stdout).group(1))
    assert diff < 1e-3
    img = sorted(IMAGES.iterdir())[1]
    from engine.infer.sources import Frame

    frame = [Frame(cv2.imread(str(img)), str(img), 0, False)]
    d_pt = Predictor(PredictOptions(weights=str(weights), source=str(img), img_size=128, **LOW)).infer(frame)[0]
    d_ox = Predictor(PredictOptions(weights=str(tmp_path / "m.onnx"), source=str(img), img_size=128,
                                    **LOW)).infer(frame)[0]
    def rows(d):  # detections with (near-)equal scores may come out in either order
        keys = torch.cat([d.classes[:, None].float(), d.boxes.round(decimals=1)], 1).tolist()
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        return torch.tensor([keys[i] for i in order]), d.masks[order]

    (k_pt, m_pt), (k_ox, m_ox) = rows(d_pt), rows(d_ox)
    assert len(d_pt) == 5 and torch.allclose(k_pt, k_ox, atol=0.2)
    assert (m_pt ^ m_ox).float().mean() < 1e-3


def test_static_batch_onnx_runs_a_folder_in_batches(weights, tmp_path):
    """An export without --dynamic has batch 1; detect.py batches 8 frames and must still run."""
    r = subprocess.run([sys.executable, str(ROOT / "export.py"), "--weights", str(weights), "--img-size", "128",
                        "--out", str(tmp_path / "s.onnx")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from engine.infer.sources import Frame

    frames = [Frame(cv2.imread(str(p)), str(p), 0, False) for p in sorted(IMAGES.iterdir())[:3]]
    opts = dict(source=str(IMAGES), img_size=128, **LOW)
    together = Predictor(PredictOptions(weights=str(tmp_path / "s.onnx"), **opts)).infer(frames)
    alone = [Predictor(PredictOptions(weights=str(tmp_path / "s.onnx"), **opts)).infer([f])[0] for f in frames]
    assert [len(d) for d in together] == [len(d) for d in alone]
    assert all(torch.allclose(a.boxes, b.boxes, atol=1e-3) for a, b in zip(together, alone))
