"""Official checkpoints straight into the CLIs: train.py takes its architecture from the file and
fine-tunes, export.py writes ONNX; both convert in memory with a one-line notice."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFICIAL, ROOT, require_shared
from utils.io import load_checkpoint

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_train_and_export_from_an_official_file(tmp_path):
    src = require_shared(OFFICIAL / "yolov7-tiny-w050.pt", "official checkpoints")
    r = _run(str(ROOT / "train.py"), "--weights", str(src), "--data", str(ROOT / "cfg/data/coco-mini.yaml"),
             "--epochs", "1", "--img-size", "128", "--batch-size", "8", "--workers", "0", "--project",
             str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("official YOLOv5/YOLOv7 checkpoint, converted in memory") == 1
    loaded, total = map(int, re.search(r"transferred (\d+)/(\d+) tensors", r.stderr).groups())
    assert loaded == total  # every tensor: the model is the file's own graph, with its 80 classes
    ckpt = load_checkpoint(tmp_path / "runs/exp/weights/last.pt")
    assert ckpt["config"]["model"]["act"] == "lrelu" and ckpt["config"]["model"]["width_multiple"] == 0.5
    assert [row[2] for row in ckpt["config"]["model"]["backbone"]].count("ELAN") == 4

    r = _run(str(ROOT / "export.py"), "--weights", str(src), "--img-size", "160", "--out", str(tmp_path / "t.onnx"),
             cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "t.onnx").is_file(), r.stderr[-2000:]
    assert "converted in memory" in r.stderr
