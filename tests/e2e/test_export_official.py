"""The official files through every format, each exported once per module: the real yolov5n.pt
release (raw ONNX, OpenVINO FP32 and INT8, TorchScript, an end-to-end ONNX graph at val.py's
settings), whose val.py --weights gives the checkpoint's box AP on coco_dev32's 32 images (INT8
within the drop the README states); the YOLOv5n-seg architecture (raw and end-to-end ONNX,
end-to-end OpenVINO), whose val.py detections and masks are the checkpoint's; the README's
onnxruntime-only snippet on an end-to-end file."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

import val
from benchmarks.harness.deploy import merged_coco_val
from conftest import BUNDLED, ROOT
from engine.eval.coco_eval import score
from engine.export.exporter import Exported, export
from engine.export.options import ExportOptions
from engine.export.checks import compare_detections
from engine.infer.predictor import PredictOptions, Predictor
from engine.infer.sources import Frame
from tests.spread import spread_head
from utils.io import save_checkpoint
from utils.structures import Detections

BUNDLED_IMAGES = sorted((BUNDLED / "images").iterdir())
SIZE = 320  # val at 320: the formats' agreement, at a quarter of 640's cost
SEG_MAX_DET = 100  # the segmentation test's val.py --max-det: a third of the masks to paste and encode
VAL_NMS = dict(nms=True, multi_label=True, conf_thres=0.001, iou_thres=0.65, topk_all=300)  # val.py's defaults
INT8_DROP = 0.015  # box AP, at most (the README's figure is measured at 640 by benchmarks/inference.py)
pytestmark = pytest.mark.slow  # each test exports the official files and runs val.py on them (about 2.5 min here)


@pytest.fixture(scope="module")
def dev32(shared_data, tmp_path_factory) -> Path:
    """coco_dev32's train and val images as one val set (the data YAML)."""
    return merged_coco_val(shared_data / "dev/coco_dev32", tmp_path_factory.mktemp("dev32"))


@pytest.fixture(scope="module")
def v5n(official, tmp_path_factory) -> tuple[Path, list[Exported]]:
    folder = tmp_path_factory.mktemp("v5n")
    src = shutil.copy(official / "yolov5n.pt", folder / "yolov5n.pt")
    files = export(ExportOptions(weights=str(src), img_size=SIZE, include=("onnx", "openvino", "torchscript"),
                                 int8=True, dynamic=True))
    files += export(ExportOptions(weights=str(src), img_size=SIZE, dynamic=True, out=str(folder / "e2e.onnx"),
                                  **VAL_NMS))
    return Path(src), files


@pytest.fixture(scope="module")
def v5n_seg(official, tmp_path_factory) -> tuple[Path, list[Exported]]:
    """The official YOLOv5n-seg architecture (../shared/official holds it with random weights, no
    trained release) converted in memory, its head spread to tens of confident boxes and masks
    per image (tests/spread.py), exported raw and end to end at val.py's settings."""
    from engine.checkpoint import model_from_checkpoint, read_weights
    from engine.export.checks import check_input

    folder = tmp_path_factory.mktemp("v5nseg")
    ckpt = read_weights(official / "yolov5n-seg.pt")
    model = model_from_checkpoint(ckpt).eval()
    spread_head(model, check_input(SIZE, 1, BUNDLED_IMAGES[0])[0], obj=(-5.0, 1.0), cls=(-5.0, 1.0))
    src = save_checkpoint({**ckpt, "model": model.state_dict(), "ema": None}, folder / "v5nseg.pt")
    files = export(ExportOptions(weights=str(src), img_size=SIZE, dynamic=True))
    files += export(ExportOptions(weights=str(src), img_size=SIZE, include=("onnx", "openvino"), dynamic=True,
                                  out=str(folder / "e2e.onnx"), **{**VAL_NMS, "topk_all": SEG_MAX_DET}))
    return Path(src), files


def val_json(weights: Path, data: Path, out: Path, *flags: str) -> Path:
    """val.py --weights at SIZE with --save-json; the predictions file."""
    assert val.main(["--weights", str(weights), "--data", str(data), "--img-size", str(SIZE), "--workers", "0",
                     "--save-json", "--project", str(out), "--name", weights.name, "--exist-ok", *flags]) == 0
    return out / weights.name / "predictions.json"


def box_ap(weights: Path, data: Path, out: Path) -> float:
    """val.py's box AP at full precision (its table prints three decimals)."""
    return score(data.parent / "all.json", val_json(weights, data, out), ("bbox",))["bbox"]["stats"]["AP"]


def test_val_of_every_yolov5n_format_gives_the_checkpoints_ap(v5n, dev32, tmp_path):
    src, files = v5n
    assert [(e.format, e.precision) for e in files] == [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "int8"),
                                                        ("torchscript", "fp32"), ("onnx", "fp32")]
    ref = box_ap(src, dev32, tmp_path)
    assert ref > 0.2  # real figures (0.280 at 640)
    for e in files:
        ap = box_ap(e.path, dev32, tmp_path)
        assert abs(ap - ref) <= (INT8_DROP if e.precision == "int8" else 0.002), (e.path.name, ap, ref)


def detections_by_image(pred: Path, min_score: float) -> dict[int, Detections]:
    """A COCO results file's detections above min_score, per image (masks decoded from RLE)."""
    import pycocotools.mask as mask_utils

    found: dict[int, list[dict]] = {}
    for d in json.loads(pred.read_text()):
        if d["score"] > min_score:
            found.setdefault(d["image_id"], []).append(d)
    out = {}
    for image_id, ds in found.items():
        boxes = torch.tensor([d["bbox"] for d in ds])
        masks = torch.from_numpy(mask_utils.decode([d["segmentation"] for d in ds])).permute(2, 0, 1).bool()
        out[image_id] = Detections(torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1), torch.tensor(
            [d["score"] for d in ds]), torch.tensor([d["category_id"] for d in ds]), masks)
    return out


def test_val_of_yolov5n_seg_formats_gives_the_checkpoints_detections_masks_and_ap(v5n_seg, tmp_path):
    """val.py on the bundled val images: every export's scored detections are the checkpoint's
    (those above 0.5 one to one with their masks), and so are its box and mask AP. The
    weights are random, so the AP is near zero: the detections are what show the agreement."""
    src, files = v5n_seg
    assert [(e.format, e.path.name) for e in files] == [("onnx", "v5nseg.onnx"), ("onnx", "e2e.onnx"),
                                                        ("openvino", "e2e_openvino_model")]
    data, ann = ROOT / "cfg/data/coco-mini.yaml", BUNDLED / "annotations/instances_val.json"
    ref_json = val_json(src, data, tmp_path, "--max-det", str(SEG_MAX_DET))
    ref, ref_ap = detections_by_image(ref_json, 0.5), score(ann, ref_json, ("bbox", "segm"))
    assert 20 <= sum(len(d) for d in ref.values()) and max(len(d) for d in ref.values()) < SEG_MAX_DET  # above the cut
    for e in files:
        got_json = val_json(e.path, data, tmp_path, "--max-det", str(SEG_MAX_DET))
        got = detections_by_image(got_json, 0.5)
        assert got.keys() == ref.keys(), e.path.name
        for image_id, r in ref.items():
            d = compare_detections(r, got[image_id])
            assert d.ok(box_iou_min=0.98, score_tol=5e-5), (e.path.name, image_id, d.largest)  # scores kept to 1e-5
        ap = score(ann, got_json, ("bbox", "segm"))
        assert all(abs(ap[k]["stats"]["AP"] - ref_ap[k]["stats"]["AP"]) <= 0.002 for k in ap), e.path.name


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- onnxruntime-snippet -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md: the onnxruntime snippet (after <!-- onnxruntime-snippet -->) is missing"
    return found.group(1)


def test_the_readme_onnxruntime_snippet_runs_on_an_end_to_end_export(official, tmp_path, shared_data):
    """The README's lines, run as they are in a folder holding best.onnx (export.py --nms) and
    bus.jpg, with onnxruntime, numpy and cv2 only: they print detect.py's detections."""
    code = readme_snippet()
    assert len(code.strip().splitlines()) <= 16 and "gradpath" not in code and "torch" not in code
    src = shutil.copy(official / "yolov5n.pt", tmp_path / "best.pt")
    export(ExportOptions(weights=str(src), nms=True, img_size=640))
    shutil.copy(shared_data / "images/bus.jpg", tmp_path / "bus.jpg")
    (tmp_path / "snippet.py").write_text(code)
    r = subprocess.run([sys.executable, "-I", "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    printed = [line.split() for line in r.stdout.strip().splitlines()]  # name (may hold spaces), score, box
    predictor = Predictor(PredictOptions(weights=str(tmp_path / "best.onnx"), source=str(tmp_path), device="cpu"))
    ours = predictor.infer([Frame(cv2.imread(str(tmp_path / "bus.jpg")), "bus.jpg", 0, False)])[0]
    assert len(printed) == len(ours) >= 4, r.stdout
    assert [" ".join(p[:-5]) for p in printed] == [predictor.backend.meta.names[c] for c in ours.classes.tolist()]
    got = torch.tensor([[float(v) for v in p[-5:]] for p in printed])
    h, w = cv2.imread(str(tmp_path / "bus.jpg")).shape[:2]
    boxes = torch.min(got[:, 1:].clamp(min=0), torch.tensor([w, h, w, h]))  # detect.py clips to the image
    assert (got[:, 0] - ours.scores).abs().max() <= 1e-3 and (boxes - ours.boxes).abs().max() <= 1.0
