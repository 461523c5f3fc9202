"""The real YOLOv5n release through detect.py and val.py gives the official code's numbers on
coco_dev32 (../shared/official/README.md says how those were made): the same detections, and
the same box AP, so preprocessing and postprocessing match the official pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import detect
import val
from engine.eval.coco_eval import STAT_NAMES, load_gt, score
from utils.geometry import box_iou


@pytest.fixture(scope="module")
def dev32(shared_data) -> Path:
    return shared_data / "dev" / "coco_dev32"


def match(theirs: np.ndarray, ours: np.ndarray, min_iou: float = 0.98, max_dscore: float = 0.01):
    """Rows [x1, y1, x2, y2, score, class]. Each official detection, highest score first, takes
    the unused one of ours of its class, within max_dscore in score, that overlaps it most, if
    that overlap reaches min_iou. Returns (official matched, ours used) as bool arrays."""
    matched, used = np.zeros(len(theirs), bool), np.zeros(len(ours), bool)
    if len(theirs) and len(ours):
        iou = box_iou(torch.from_numpy(theirs[:, :4]), torch.from_numpy(ours[:, :4])).numpy()
        for i in np.argsort(-theirs[:, 4], kind="stable"):
            ok = (ours[:, 5] == theirs[i, 5]) & (np.abs(ours[:, 4] - theirs[i, 4]) <= max_dscore) & ~used
            if ok.any():
                j = np.flatnonzero(ok)[np.argmax(iou[i, ok])]
                if iou[i, j] >= min_iou:
                    matched[i] = used[j] = True
    return matched, used


def test_dev32_detections_match_official(official, dev32, tmp_path):
    """detect.py (640, conf 0.25, IoU 0.45) finds every one of the official code's 246 detections:
    same class, box IoU >= 0.98, score within 0.01; none of ours above 0.26 is left unmatched."""
    assert detect.main(["--weights", str(official / "yolov5n.pt"), "--source", str(dev32 / "images"), "--img-size", "640",
                        "--save-json", "--nosave", "--project", str(tmp_path), "--name", "d"]) == 0
    expected = json.loads((official / "yolov5n-dev32-detections.json").read_text())
    ours: dict[str, list] = {name: [] for name in expected}
    ids = sorted(c["id"] for c in json.loads((dev32 / "annotations/instances_val.json").read_text())["categories"])
    for d in json.loads((tmp_path / "d" / "predictions.json").read_text()):
        x, y, w, h = d["bbox"]
        ours[d["file_name"]].append([x, y, x + w, y + h, d["score"], ids.index(d["category_id"])])
    found = total = extra = 0
    for name, rec in expected.items():
        theirs, mine = np.array(rec["dets"]).reshape(-1, 6), np.array(ours[name]).reshape(-1, 6)
        matched, used = match(theirs, mine)
        found, total = found + matched.sum(), total + len(theirs)
        extra += (~used & (mine[:, 4] > 0.26)).sum()
    assert total == 246
    assert (found, extra) == (246, 0), f"{found}/{total} official detections matched, {extra} of ours unmatched"


def test_dev32_input_shapes_match_official(official, dev32):
    """Each image goes in at the official detect.py's letterboxed size (640 long side, the short
    one padded to the next multiple of 32)."""
    from engine.infer.predictor import PredictOptions, Predictor
    from engine.infer.sources import Frame, read_image

    pred = Predictor(PredictOptions(weights=str(official / "yolov5n.pt"), source=str(dev32 / "images"), img_size=640))
    for name, rec in json.loads((official / "yolov5n-dev32-detections.json").read_text()).items():
        img = read_image(dev32 / "images" / name)
        assert list(img.shape[:2]) == rec["orig_hw"]
        assert list(pred.input_shape(Frame(img, name, 0, False))) == rec["input_hw"], name


def test_dev32_box_ap_matches_official(official, dev32, tmp_path):
    """val.py on both coco_dev32 JSONs as one set (640, batch 32, conf 0.001, NMS IoU 0.65) scores
    the official box AP and AP50 within 0.005 (pycocotools, as the official figures)."""
    parts = [json.loads((dev32 / "annotations" / f"instances_{s}.json").read_text()) for s in ("train", "val")]
    merged = {**parts[0], "images": parts[0]["images"] + parts[1]["images"],
              "annotations": parts[0]["annotations"] + parts[1]["annotations"]}
    (tmp_path / "all.json").write_text(json.dumps(merged))
    data = tmp_path / "dev32.yaml"
    data.write_text(yaml.safe_dump({"path": str(dev32), "val": {"images": "images",
                                                                "annotations": str(tmp_path / "all.json")}}))
    assert val.main(["--weights", str(official / "yolov5n.pt"), "--data", str(data), "--img-size", "640", "--batch-size", "32",
                     "--conf-thres", "0.001", "--iou-thres", "0.65", "--max-det", "300", "--workers", "0",
                     "--save-json", "--project", str(tmp_path), "--name", "v"]) == 0
    gt = load_gt(tmp_path / "all.json", "pycocotools")
    stats = score(tmp_path / "all.json", tmp_path / "v" / "predictions.json", ("bbox",), gt=gt,
                  backend="pycocotools")["bbox"]["stats"]
    expected = dict(zip(STAT_NAMES, json.loads((official / "yolov5n-dev32-ap.json").read_text())["official yolov5n.pt"]))
    assert abs(stats["AP"] - expected["AP"]) <= 0.005 and abs(stats["AP50"] - expected["AP50"]) <= 0.005, stats
    assert all(abs(stats[k] - expected[k]) <= 0.01 for k in STAT_NAMES), (stats, expected)
