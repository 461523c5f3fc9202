"""The official READMEs' command lines, pasted as they are with tiny settings: YOLOv7's training
command (train and test sizes, its p5 hyp file, a YOLOv7 data/coco.yaml of list files), YOLOv5's
training command on an Ultralytics-form YAML, and the detect command both READMEs show."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import OFFICIAL, ROOT, require_shared
from dataset_forms import yolov7_form
from utils.io import load_checkpoint

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_yolov7_readme_train_command(shared_data, tmp_path):
    weights = require_shared(OFFICIAL / "yolov5n.pt", "official checkpoints")
    hyp = require_shared(OFFICIAL / "hyp/yolov7-hyp.scratch.p5.yaml", "official hyp files")
    data, repo = yolov7_form(shared_data, tmp_path)
    r = _run(str(ROOT / "train.py"), "--workers", "0", "--device", "cpu", "--batch-size", "8", "--data",
             "data/coco.yaml", "--img", "320", "320", "--weights", str(weights), "--hyp", str(hyp), "--epochs", "1",
             "--project", str(tmp_path / "runs"), cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Average Precision" in r.stdout  # validated on the list file's 4 images, the COCO tables printed
    assert "transferred 350/350 tensors" in r.stderr and "head rows carried" not in r.stderr  # 80 classes: all
    ckpt = load_checkpoint(tmp_path / "runs/exp/weights/last.pt")
    args = ckpt["config"]["args"]
    assert (ckpt["epoch"], args["img_size"], args["val_img_size"], args["batch_size"]) == (0, 320, 320, 8)
    assert ckpt["config"]["hyp"]["warmup_min_iters"] == 1000  # YOLOv7's train.py minimum, for its own hyp file
    assert ckpt["config"]["names"][:3] == ["person", "bicycle", "car"]


def test_yolov5_readme_train_command(shared_data, tmp_path):
    weights = require_shared(OFFICIAL / "yolov5n.pt", "official checkpoints")
    data = shared_data / "dev/coco8-seg/coco8-seg.yaml"
    assert isinstance(yaml.safe_load(data.read_text())["names"], dict)  # the Ultralytics form
    r = _run(str(ROOT / "train.py"), "--data", str(data), "--weights", str(weights), "--img", "320", "--epochs", "1",
             "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Average Precision" in r.stdout
    ckpt = load_checkpoint(tmp_path / "runs/exp/weights/best.pt")
    assert ckpt["config"]["args"]["img_size"] == 320 and ckpt["config"]["args"]["val_img_size"] is None


def test_readme_detect_command(shared_data, tmp_path):
    weights = require_shared(OFFICIAL / "yolov5n.pt", "official checkpoints")
    source = shared_data / "images"
    r = _run(str(ROOT / "detect.py"), "--weights", str(weights), "--conf", "0.25", "--img-size", "320", "--source",
             str(source), "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "runs/exp").glob("*.jpg"))
    assert written == sorted(p.name for p in source.glob("*.jpg")) and len(written) >= 5
