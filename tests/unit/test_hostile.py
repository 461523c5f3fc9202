"""Hostile input from the command line, as a user meets it: code-running and broken checkpoints,
odd and broken images, bad labels, bad configs; plus crash safety and resource stability."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, run_scripts
from models.model import build_model
from utils.io import save_checkpoint

pytestmark = pytest.mark.slow
SRC_IMG = ROOT / "datasets/coco-mini/images/000000000790.jpg"  # 640x422


def _run(script: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> Path:
    model = build_model(ROOT / "cfg/models/gp-n-seg.yaml")
    cfg = {"model": model.yaml, "nc": 80, "names": [str(i) for i in range(80)], "img_size": 128,
           "data": str(ROOT / "cfg/data/coco-mini.yaml")}
    return save_checkpoint({"model": model.state_dict(), "ema": None, "config": cfg},
                           tmp_path_factory.mktemp("w") / "good.pt")


def test_code_running_checkpoint_refused_everywhere(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "config": {}}, evil)
    calls = [("train.py", "--weights", str(evil), "--epochs", "1", "--project", str(tmp_path / "r")),
             ("val.py", "--weights", str(evil)),
             ("detect.py", "--weights", str(evil), "--source", str(SRC_IMG), "--project", str(tmp_path / "d")),
             ("export.py", "--weights", str(evil))]
    for (script, *_), r in zip(calls, run_scripts(calls, cwd=tmp_path)):
        assert r.returncode == 2 and "refused" in r.stderr, (script, r.stderr[-1500:])
        assert len(r.stderr.strip().splitlines()) <= 3, (script, r.stderr)
    r = subprocess.run([sys.executable, "-m", "models.convert", str(evil), "--out", str(tmp_path / "o.pt")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "refused" in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 100])
def test_broken_checkpoint_clear_error(tmp_path, good_weights, cut):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good_weights.read_bytes()[:cut])
    scripts = ("val.py", "detect.py", "export.py")
    for script, r in zip(scripts, run_scripts([(s, "--weights", str(bad)) for s in scripts], cwd=tmp_path)):
        assert r.returncode == 2 and "bad.pt" in r.stderr and ("empty" in r.stderr or "truncated" in r.stderr), \
            (script, r.stderr[-800:])


def test_weights_from_another_cfg_say_which_layers_differ(tmp_path, good_weights):
    cfg = yaml.safe_load((ROOT / "cfg/models/gp-n-seg.yaml").read_text())
    cfg["backbone"][1][3][0] = 48  # layer 1 narrower: layers 1 and 2 change shape
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(cfg))
    r = _run("train.py", "--weights", str(good_weights), "--cfg", str(tmp_path / "narrow.yaml"), "--epochs", "1",
             "--img-size", "96", "--workers", "0", "--noval", "--project", str(tmp_path / "r"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "layers that differ from --cfg: shape differs: layers.1, layers.2" in r.stderr


def _odd_images(folder: Path) -> dict[str, tuple[int, int] | None]:
    """name -> expected decoded (h, w), or None for files that must be skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    base = cv2.imread(str(SRC_IMG))
    rgb = Image.open(SRC_IMG).convert("RGB")
    (folder / "zero.jpg").write_bytes(b"")
    raw = SRC_IMG.read_bytes()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (folder / "text.jpg").write_text("this is not an image\n")
    rgba = np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])
    cv2.imwrite(str(folder / "alpha.png"), rgba)
    cv2.imwrite(str(folder / "deep16.png"), base.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "gray.jpg"), cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rgb.save(folder / "exif.jpg", exif=exif)
    cv2.imwrite(str(folder / "huge.jpg"), cv2.resize(base, (20000, 120)))
    cv2.imwrite(str(folder / "tiny.png"), cv2.resize(base, (8, 8)))
    h, w = base.shape[:2]
    return {"zero.jpg": None, "truncated.jpg": None, "text.jpg": None, "alpha.png": (h, w), "deep16.png": (h, w),
            "gray.jpg": (h, w), "cmyk.jpg": (h, w), "exif.jpg": (w, h), "huge.jpg": (120, 20000), "tiny.png": (8, 8)}


def test_odd_images_in_train_val_and_detect(tmp_path, good_weights):
    files = _odd_images(tmp_path / "images")
    images, anns = [], []
    for i, (name, hw) in enumerate(files.items(), 1):
        h, w = hw or (100, 100)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": w * h / 4,
                     "bbox": [w / 4, h / 4, w / 2, h / 2],
                     "segmentation": [[w / 4, h / 4, 3 * w / 4, h / 4, 3 * w / 4, 3 * h / 4, w / 4, 3 * h / 4]]})
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "thing"}]}))
    split = {"images": "images", "annotations": "ann.json"}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"format": "coco", "path": str(tmp_path), "train": split,
                                                        "val": split}))
    out = tmp_path / "det"
    r, d = run_scripts([("train.py", "--data", str(tmp_path / "data.yaml"), "--epochs", "1", "--img-size", "128",
                         "--batch-size", "4", "--workers", "0", "--project", str(tmp_path / "runs")),
                        ("detect.py", "--weights", str(good_weights), "--source", str(tmp_path / "images"),
                         "--img-size", "128", "--project", str(out))], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "7 images, 7 instances; missing 0, empty 0, corrupt 3" in r.stderr  # train and val summaries
    assert "7 images," in r.stdout  # the final evaluation ran over the 7 readable images
    assert d.returncode == 0, d.stderr[-3000:]
    assert "7 images, 0 video frames" in d.stderr and "3 skipped" in d.stderr
    for name, hw in files.items():
        saved = out / "exp" / name
        if hw is None:
            assert not saved.exists()
        else:
            assert cv2.imread(str(saved)).shape[:2] == hw, name  # same orientation as training decoded it


def test_bad_labels_counted_and_training_goes_on(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"images/im{k}.jpg"), cv2.imread(str(SRC_IMG)))
    (tmp_path / "labels/im0.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n1 nan 0.5 0.1 0.1\n"
                                             "1 -0.5 -0.5 0.1 0.1\n1 0.5 0.5 1.8 1.8\n0 0.1 0.1 0.2 0.2\n")
    (tmp_path / "labels/im1.txt").write_text("")  # empty: an image with no objects
    # im2 has no label file at all
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({
        "format": "yolo", "path": str(tmp_path), "names": ["a", "b"],
        "train": {"images": "images", "labels": "labels"}, "val": {"images": "images", "labels": "labels"}}))
    r = _run("train.py", "--data", str(tmp_path / "data.yaml"), "--epochs", "1", "--img-size", "96",
             "--batch-size", "3", "--workers", "0", "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "im0.txt:2: class 7 out of range" in r.stderr and "im0.txt:3: non-finite box" in r.stderr
    assert "im0.txt:4: box" in r.stderr  # entirely outside the image
    assert "3 images, 3 instances; missing 0, empty 2, corrupt 0, fixed 1, bad labels skipped 3" in r.stderr


@pytest.mark.parametrize("body, flag, message", [
    ({"lr0": "fast"}, "--hyp", "hyperparameter 'lr0' must be a number"),
    ({"bogus_key": 1}, "--hyp", "unknown hyperparameter 'bogus_key'"),
    ({"format": "coco", "path": "/nope"}, "--data", "'path' folder not found"),
    ({"format": "yolo", "path": ".", "nc": 3, "names": ["a"], "train": {"images": ".", "labels": "."}}, "--data",
     "'nc' is 3 but there are 1 names"),
    ({"nc": 80, "backbone": [[-1, 1, "Cnv", [16, 3, 2]]], "head": []}, "--cfg", "row 0 (backbone): unknown block 'Cnv'"),
])
def test_bad_configs_fail_at_startup_in_one_line(tmp_path, body, flag, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(body))
    r = _run("train.py", flag, str(path), "--project", str(tmp_path / "runs"), cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1 and "bad.yaml" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing heavy started, no run folder


def test_memory_flat_over_epochs_with_workers(tmp_path):
    r = _run("train.py", "--epochs", "3", "--img-size", "160", "--batch-size", "8", "--workers", "2", "--noval",
             "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rss = [float(row["sys/rss_gib"]) for row in csv.DictReader((tmp_path / "runs/exp/results.csv").open())]
    assert len(rss) == 3 and rss[2] <= 1.05 * rss[1], rss


def test_no_file_handles_leak_over_a_video(shared_data, good_weights, tmp_path):
    from engine.infer.predictor import PredictOptions, Predictor

    video = shared_data / "videos/carphone_pristine.mp4"
    opt = lambda name: PredictOptions(weights=str(good_weights), source=str(video), img_size=96,  # noqa: E731
                                      project=str(tmp_path), name=name, save_txt=True)
    Predictor(opt("warm")).run()  # first run: libraries open what they keep open
    before = len(os.listdir("/proc/self/fd"))
    for k in range(3):
        Predictor(opt(f"run{k}")).run()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_image_damaged_after_indexing(tmp_path):
    """The label index does not re-read images, so one damaged later is met while loading: training
    (in a worker) warns and trains on another image; validation stops with one line naming it."""
    from data.config import load_data_config
    from data.datasets import load_index

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k in range(4):
        cv2.imwrite(str(tmp_path / f"images/im{k}.jpg"), cv2.imread(str(SRC_IMG)))
        (tmp_path / f"labels/im{k}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"format": "yolo", "path": str(tmp_path), "names": ["a"],
                                    "train": {"images": "images", "labels": "labels"},
                                    "val": {"images": "images", "labels": "labels"}}))
    assert len(load_index(load_data_config(data), "train")) == 4  # indexed and cached while readable
    (tmp_path / "images/im2.jpg").write_bytes(b"not a jpeg any more")
    r = _run("train.py", "--data", str(data), "--epochs", "2", "--img-size", "96", "--batch-size", "4",
             "--workers", "2", "--noval", "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "im2.jpg: cannot read image" in r.stderr and "training on another image instead" in r.stderr
    v = _run("val.py", "--weights", str(tmp_path / "runs/exp/weights/last.pt"), "--data", str(data),
             "--img-size", "96", "--workers", "2", "--project", str(tmp_path / "val"), cwd=tmp_path)
    assert v.returncode == 2
    errors = [ln for ln in v.stderr.splitlines() if ln.startswith("val.py: error:")]
    assert len(errors) == 1 and "im2.jpg: cannot read image" in errors[0] and "Traceback" not in errors[0], v.stderr
