"""Dataset YAMLs in the YOLOv5 / YOLOv7 / Ultralytics / Roboflow forms over real COCO labels, the
one-line errors of broken YAMLs and list files, the derived ground truth's cache, and data.check."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from data import check
from data.config import load_data_config
from data.datasets import ground_truth_json, load_index
from data.splits import label_file
from dataset_forms import (HOSTILE, TRAIN2, VAL4, coco128_names, folders_form, hostile_yaml, place, roboflow_form,
                           write_yaml, yolov7_form)
from utils.errors import ConfigError

BROKEN_LABEL_LINES = ["99 0.5 0.5 0.1 0.1", "0 0.98 0.5 0.1 0.1"]  # class out of range; box past the right edge


def _by_file(index) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k, f in enumerate(index.files):
        boxes, classes, _ = index.instances(k)
        order = np.lexsort(np.c_[boxes, classes].T[::-1])
        out[Path(f).name] = (classes[order], boxes[order])
    return out


def test_every_form_reads_the_same_labels(shared_data, tmp_path, monkeypatch, caplog):
    ultralytics = shared_data / "dev/coco8-seg/coco8-seg.yaml"  # path: ., names as a dict
    yolov7, yolov7_root = yolov7_form(shared_data, tmp_path)
    folders, roboflow = folders_form(shared_data, tmp_path), roboflow_form(shared_data, tmp_path)
    monkeypatch.chdir(yolov7_root)  # YOLOv7's paths are relative to where it runs
    indexes = {}
    for form, path in [("ultralytics", ultralytics), ("yolov7", yolov7), ("folders", folders), ("roboflow", roboflow)]:
        caplog.clear()
        cfg = load_data_config(path)
        assert cfg.format == "yolo" and cfg.nc == 80 and cfg.names[:2] == ["person", "bicycle"], form
        indexes[form] = load_index(cfg, "val")
        assert len(load_index(cfg, "train")) == (4 if form in ("ultralytics", "folders") else 2), form
        inert = [r.getMessage() for r in caplog.records if "do nothing here" in r.getMessage()]
        assert inert == {"yolov7": [f"{path}: key(s) download do nothing here, ignored"],
                         "roboflow": [f"{path}: key(s) roboflow do nothing here, ignored"]}.get(form, []), form
    ref = _by_file(indexes["ultralytics"])
    assert sorted(ref) == [f"{s}.jpg" for s in VAL4] and sum(len(c) for c, _ in ref.values()) == 17
    for form, index in indexes.items():
        got = _by_file(index)
        assert sorted(got) == sorted(ref), form
        for name, (classes, boxes) in ref.items():
            assert np.array_equal(got[name][0], classes), (form, name)
            assert np.abs(got[name][1] - boxes).max() < 0.01, (form, name)  # box lines: 6 decimals
    flags = indexes["roboflow"].polygon_flags()
    assert 0 < flags.sum() < len(flags) and indexes["folders"].polygon_flags().all()  # mixed / all polygons


def test_label_files_are_where_the_official_loaders_look():
    assert label_file(Path("/d/images/x/images/train/a.b.jpg")) == Path("/d/images/x/labels/train/a.b.txt")
    assert label_file(Path("/d/train/images/a.png")) == Path("/d/train/labels/a.txt")
    assert label_file(Path("/d/imgs/images.jpg")) == Path("/d/imgs/images.txt")  # no images folder: beside it
    assert label_file(Path("/d/images/a.jpg"), Path("/l")) == Path("/l/a.txt")  # our mapping form's labels folder


def test_dotdot_entries_resolve_as_the_official_loaders(shared_data, tmp_path):
    """`../valid/images` names the folder above when it exists there, else the one inside."""
    names = coco128_names(shared_data)
    place(shared_data, VAL4[:1], tmp_path / "export/valid/images", tmp_path / "export/valid/labels")
    inside = write_yaml(tmp_path / "export/data.yaml", {"val": "../valid/images", "names": names})
    assert load_data_config(inside).splits["val"].sources == (tmp_path / "export/valid/images",)
    place(shared_data, VAL4[1:2], tmp_path / "valid/images", tmp_path / "valid/labels")
    assert load_data_config(inside).splits["val"].sources == (tmp_path / "valid/images",)


def test_yolov7_paths_without_path_key_need_its_folder(shared_data, tmp_path, monkeypatch):
    yaml_path, _ = yolov7_form(shared_data, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_data_config(yaml_path)
    assert str(e.value) == (f"{yaml_path}: 'train': ./coco/train2017.txt not found (looked at "
                            f"{tmp_path}/yolov7/data/coco/train2017.txt or {tmp_path}/coco/train2017.txt)")


@pytest.mark.parametrize("body, message", HOSTILE, ids=[m.split(": ", 1)[1][:30] for _, m in HOSTILE])
def test_broken_yaml_or_list_file_is_one_line(shared_data, tmp_path, body, message):
    path = hostile_yaml(shared_data, tmp_path, body)
    with pytest.raises(ConfigError) as e:
        cfg = load_data_config(path)
        for split in cfg.splits:
            load_index(cfg, split)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(tmp_path)), text
    assert message.replace("TMP", str(tmp_path)) in text, text


def test_derived_ground_truth_is_cached_and_follows_the_labels(shared_data, tmp_path):
    cfg = load_data_config(roboflow_form(shared_data, tmp_path))
    gt = ground_truth_json(cfg, "val", load_index(cfg, "val"))
    assert gt == tmp_path / "roboflow/valid/labels.coco.json"
    first, stamp = json.loads(gt.read_text()), gt.stat().st_mtime_ns
    assert len(first["images"]) == 4 and len(first["annotations"]) == 17
    time.sleep(0.01)
    assert ground_truth_json(cfg, "val", load_index(cfg, "val")) == gt and gt.stat().st_mtime_ns == stamp  # cached
    label = tmp_path / f"roboflow/valid/labels/{VAL4[0]}.txt"
    label.write_text(label.read_text() + "0 0.5 0.5 0.2 0.2\n")
    ground_truth_json(cfg, "val", load_index(cfg, "val"))
    assert len(json.loads(gt.read_text())["annotations"]) == 18


def _broken_dataset(shared_data: Path, tmp: Path) -> Path:
    """train: 4 real images (one label with a bad class, a clipped box and a duplicate line; one
    without a label file; one with an empty one) and a corrupt image; val: the corrupt image only."""
    place(shared_data, VAL4, tmp / "images/train", tmp / "labels/train", boxes_every=3)
    first = tmp / f"labels/train/{VAL4[0]}.txt"
    lines = first.read_text().splitlines()
    first.write_text("\n".join(lines + BROKEN_LABEL_LINES + lines[:1]) + "\n")
    (tmp / f"labels/train/{VAL4[1]}.txt").unlink()
    (tmp / f"labels/train/{VAL4[2]}.txt").write_text("")
    for split in ("train", "val"):
        (tmp / f"images/{split}").mkdir(parents=True, exist_ok=True)
        (tmp / f"images/{split}/bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    body = {"train": "images/train", "val": "images/val", "names": coco128_names(shared_data)}
    return write_yaml(tmp / "broken.yaml", body)


def test_data_check_reports_what_training_counts(shared_data, tmp_path, capsys, monkeypatch):
    path = _broken_dataset(shared_data, tmp_path)
    assert check.main([str(path), "--split", "train"]) == 0
    out = capsys.readouterr().out
    label = tmp_path / f"labels/train/{VAL4[0]}.txt"
    n = len(label.read_text().splitlines())
    for expected in ["images: 5 listed, 4 usable",
                     "images without labels: 2 (no label file: 1, label file with no usable instance: 1)",
                     f"{tmp_path}/images/train/{VAL4[1]}.jpg: no label file {tmp_path}/labels/train/{VAL4[1]}.txt",
                     "corrupt images (skipped): 1", f"{tmp_path}/images/train/bad.jpg: image corrupt, skipped",
                     "bad label lines (skipped): 1", f"{label}:{n - 2}: class 99 out of range 0..79, skipped",
                     "duplicates (used once): 1", f"{label}:{n}: the same line as an earlier one, skipped",
                     "fixed (clipped boxes, polygons replaced by their box): 1", f"{label}:{n - 1}: box clipped",
                     "none: missing images, crowd regions", "0  person"]:
        assert expected in out, (expected, out)
    cfg = load_data_config(path)
    monkeypatch.setattr("data.datasets.read_yolo", lambda *a: pytest.fail("rebuilt: data.check left no index"))
    index = load_index(cfg, "train")  # training's index: data.check's, from the cache it built
    kept = sum(len((shared_data / f"dev/coco128_instances/labels/train2017/{s}.txt").read_text().splitlines())
               for s in (VAL4[0], VAL4[3])) + 1  # the clipped box stays
    assert index.summary() == (f"4 images, {kept} instances; missing 0, empty 2, corrupt 1, fixed 1, "
                               "bad labels skipped 1, crowd (eval only) 0")
    flags = index.polygon_flags()
    assert f"instances: {kept} ({flags.sum()} polygon, {(~flags).sum()} box only)" in out and 0 < flags.sum() < kept


def test_data_check_exit_codes(shared_data, tmp_path, capsys):
    path = _broken_dataset(shared_data, tmp_path)
    r = subprocess.run([sys.executable, "-m", "data.check", str(path)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 1 and "val: images/val\n  images: 1 listed, 0 usable" in r.stdout, r.stdout + r.stderr
    assert "error: 'val' has no usable image" in r.stdout and "Traceback" not in r.stderr
    assert check.main([str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"data.check: error: {tmp_path}/nope.yaml: dataset file not found\n"


def test_data_check_on_coco128(shared_data, capsys):
    assert check.main([str(shared_data / "dev/coco128_instances/coco128-seg.yaml")]) == 0
    out = capsys.readouterr().out
    for expected in ["train: images/train2017\n  images: 128 listed, 128 usable",
                     "images without labels: 2 (no label file: 0, label file with no usable instance: 2)",
                     "000000000250.jpg: no instances", "instances: 929 (929 polygon, 0 box only)",
                     "image sizes: height 218-640, width 333-640 pixels",
                     "71 of 80 classes have instances; none of: fire hydrant,",
                     "val: images/train2017\n  the same images and labels as train"]:
        assert expected in out, (expected, out)
    assert re.search(r"\n +0  person +254 +61\n", out) and re.search(r"\n +79  toothbrush +5 +2\n", out)


def test_a_train_split_naming_one_image_twice_uses_it_once(shared_data, tmp_path):
    place(shared_data, TRAIN2, tmp_path / "images", tmp_path / "labels")
    lines = [f"images/{TRAIN2[0]}.jpg", f"./images/{TRAIN2[0]}.jpg", f"{tmp_path}/images/{TRAIN2[1]}.jpg"]
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    cfg = load_data_config(write_yaml(tmp_path / "d.yaml", {"train": ["l.txt", "images"], "nc": 80}))
    index = load_index(cfg, "train")
    assert len(index) == 2 and index.counts["duplicates"] == 3 and cfg.names[79] == "class79"
