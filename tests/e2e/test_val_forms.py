"""val.py with the official yolov5n.pt gives the same box AP for the same 4 real COCO images
whichever dataset YAML form names them (Ultralytics, YOLOv7 list files, folders + list, Roboflow
with box and polygon lines mixed)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import val
from conftest import ROOT
from dataset_forms import HOSTILE, folders_form, hostile_yaml, roboflow_form, yolov7_form

AP_LINE = re.compile(r"--- box \(bbox\) ---\n.*?IoU=0\.50:0\.95 \| area=   all \| maxDets=100 \] = ([0-9.]+)\n"
                     r".*?IoU=0\.50      \| area=   all \| maxDets=100 \] = ([0-9.]+)", re.S)


@pytest.mark.slow
def test_same_box_ap_whichever_form_names_the_images(shared_data, official, tmp_path, monkeypatch, capsys):
    yolov7, yolov7_root = yolov7_form(shared_data, tmp_path)
    forms = {"ultralytics": shared_data / "dev/coco8-seg/coco8-seg.yaml", "yolov7": yolov7,
             "folders": folders_form(shared_data, tmp_path), "roboflow": roboflow_form(shared_data, tmp_path)}
    monkeypatch.chdir(yolov7_root)  # where YOLOv7's relative paths start
    ap = {}
    for form, data in forms.items():
        rc = val.main(["--weights", str(official / "yolov5n.pt"), "--data", str(data), "--img-size", "320",
                       "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", form])
        out = capsys.readouterr().out
        assert rc == 0 and "4 images" in out, (form, out)
        ap[form] = tuple(float(v) for v in AP_LINE.search(out).groups())
    ref = ap["ultralytics"]
    assert ref[0] > 0.2, ap  # a real score, not an empty match
    for form, (ap50_95, ap50) in ap.items():
        assert abs(ap50_95 - ref[0]) <= 0.001 and abs(ap50 - ref[1]) <= 0.001, ap


@pytest.mark.slow
def test_broken_list_file_through_val_py(shared_data, official, tmp_path):
    body = {k: v for k, v in HOSTILE[1][0].items() if k != "names"}
    path = hostile_yaml(shared_data, tmp_path, {**body, "nc": 80})  # 80 classes, as the model
    r = subprocess.run([sys.executable, str(ROOT / "val.py"), "--weights", str(official / "yolov5n.pt"),
                        "--data", str(path), "--img-size", "320", "--workers", "0",
                        "--project", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert errors == [f"val.py: error: {tmp_path}/val.txt:2: image not found: images/gone.jpg "
                      f"(looked at {tmp_path}/images/gone.jpg)"], r.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
