"""The label index at scale: categories read without parsing the JSON, the vectorised instance
checks against hand-computed cases, the YOLO process pool against the serial path, the builder
recorded in the cache, and no COCO JSON written for a YOLO training split."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BUNDLED, ROOT
from data.coco_categories import read_categories
from data.config import load_data_config
from data.datasets import index_cache, load_index, read_yolo
from data.label_index import Findings, RawInstances, check_instances
from data.loader import build_dataset
from data.splits import list_images
from engine.config import Hyp
from utils.dist import DistInfo, from_local_leader

CATS = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]


@pytest.mark.parametrize("text", [
    json.dumps({"info": {}, "images": [{"id": 1}] * 50, "annotations": [], "categories": CATS}),  # last, as COCO
    json.dumps({"categories": CATS, "images": []}, indent=2),
    '{"images": [{"file_name": "\\"categories\\": [1]"}], "categories" :\n ' + json.dumps(CATS) + "}",  # in a string
    json.dumps({"images": [{"name": "categories"}], "categories": CATS}),  # as a value, not a key
])
def test_categories_are_found_without_parsing_the_rest(tmp_path, text, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text(text)
    monkeypatch.setattr("data.coco_categories.CHUNK", 16)  # keys cut across reads
    monkeypatch.setattr("data.coco_categories.WINDOW", 8)  # values longer than the first window
    monkeypatch.setattr("data.coco_categories.json.loads", lambda *a: pytest.fail("parsed the whole file"))
    assert read_categories(path) == CATS


def test_categories_fall_back_to_a_full_parse_when_the_scan_cannot_tell(tmp_path):
    nested = {"info": {"categories": [{"id": 9, "name": "decoy"}]}, "categories": CATS}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(nested))
    assert read_categories(path) == CATS  # the key twice: which is top-level only a parse can say
    path.write_text(json.dumps({"images": []}))
    assert read_categories(path) is None
    path.write_text('{"categories": [}')
    with pytest.raises(json.JSONDecodeError):
        read_categories(path)


def test_instance_checks_by_hand(caplog):
    """Image 0 is 100 wide, 50 high. Rows: inside with a polygon; crossing the right edge (clipped,
    fixed); no area inside; non-finite; a polygon with a NaN point (box outline, fixed); no polygon
    (box outline)."""
    boxes = np.array([[10, 10, 20, 20], [90, 10, 120, 20], [100, 0, 110, 10], [np.nan, 0, 5, 5],
                      [30, 30, 40, 40], [50, 5, 60, 15]], np.float32)
    poly_a = [[10, 10], [20, 10], [15, 20]]
    poly_b = [[90, 10], [120, 10], [120, 20]]
    poly_e = [[30, 30], [np.nan, 35], [40, 40]]
    points = np.array(poly_a + poly_b + [[1, 1]] * 3 + [[1, 1]] * 3 + poly_e, np.float32)
    raw = RawInstances(np.zeros(6, np.int64), boxes, np.arange(6), np.array([3, 3, 3, 3, 3, 0]), points,
                       np.arange(6))
    findings = Findings()
    with caplog.at_level(logging.WARNING):
        out, found = check_instances(raw, np.array([[50, 100]]), lambda j: f"row {j}", raw.keys)
        findings.extend_in_order(found[::-1])  # found kind by kind: added in label order
    assert out.classes.tolist() == [0, 1, 4, 5]
    assert findings.counts == Counter(bad_labels=2, fixed=2)
    assert [e.split(":")[0] for e in findings.examples["bad_labels"]] == ["row 2", "row 3"]
    assert out.boxes.tolist() == [[10, 10, 20, 20], [90, 10, 100, 20], [30, 30, 40, 40], [50, 5, 60, 15]]
    assert out.seg_lens.tolist() == [3, 3, 4, 4]
    assert out.points[:6].tolist() == poly_a + [[90, 10], [100, 10], [100, 20]]
    assert out.points[6:].tolist() == [[30, 30], [40, 30], [40, 40], [30, 40], [50, 5], [60, 5], [60, 15], [50, 15]]
    assert "row 2: box" in caplog.text and "row 3: non-finite box" in caplog.text and "row 4: polygon" in caplog.text
    assert "row 1" not in caplog.text  # a clipped box is counted as fixed, not logged


def _yolo_copy(tmp_path: Path) -> Path:
    """coco-mini's train split as YOLO labels (converted as benchmarks/simulated_coco.py does)."""
    from benchmarks.simulated_coco import yolo_lines

    src = json.loads((BUNDLED / "annotations/instances_train.json").read_text())
    cat_index = {c: i for i, c in enumerate(sorted(c["id"] for c in src["categories"]))}
    labels = tmp_path / "labels"
    labels.mkdir()
    for im in src["images"]:
        anns = [a for a in src["annotations"] if a["image_id"] == im["id"]]
        (labels / Path(im["file_name"]).with_suffix(".txt").name).write_text(
            yolo_lines(anns, im["width"], im["height"], cat_index))
    (labels / "000000000790.txt").write_text("0 0.5 0.5 0.2 0.2\n99 0.5 0.5 0.1 0.1\nx y\n")  # bad lines
    names = [c["name"] for c in sorted(src["categories"], key=lambda c: c["id"])]
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"format": "yolo", "path": str(tmp_path), "names": names,
                                   "train": {"images": str(BUNDLED / "images"), "labels": "labels"}}))
    return cfg


def test_yolo_process_pool_gives_the_serial_index(tmp_path, monkeypatch, caplog):
    cfg = load_data_config(_yolo_copy(tmp_path))
    listing = list_images(cfg.splits["train"])
    serial = read_yolo(listing, cfg.nc, workers=1)
    monkeypatch.setattr("data.datasets.POOL_MIN_FILES", 1)
    with caplog.at_level(logging.WARNING):
        pooled = read_yolo(listing, cfg.nc, workers=2)  # 32 images in runs over two forked processes
    for k in ("files", "image_ids", "shapes", "inst_offsets", "boxes", "classes", "seg_offsets", "points"):
        assert np.array_equal(getattr(serial, k), getattr(pooled, k)), k
    assert serial.counts == pooled.counts and pooled.counts["bad_labels"] == 2
    assert serial.examples == pooled.examples
    assert "000000000790.txt:2: class 99 out of range" in caplog.text  # a worker's finding, logged here


def test_the_builder_is_recorded_and_a_yolo_training_set_writes_no_coco_json(tmp_path):
    cfg = load_data_config(_yolo_copy(tmp_path))
    index = load_index(cfg, "train")
    assert index.built_by["pid"] == os.getpid() and index.built_by["rank"] == -1
    with np.load(index_cache(cfg.splits["train"])) as z:
        assert json.loads(str(z["meta"]))["built_by"] == index.built_by
    assert load_index(cfg, "train").built_by == index.built_by  # from the cache
    train = build_dataset(cfg, "train", 64, 2, Hyp.load().aug)
    assert train.ann_file is None and not list(tmp_path.glob("*.coco.json"))
    val = build_dataset(cfg, "train", 64, 2)  # scored: it gets the derived ground truth
    assert val.ann_file.is_file() and json.loads(val.ann_file.read_text())["annotations"]


def test_outside_torchrun_the_work_is_done_here():
    assert from_local_leader(DistInfo(), "k", "do it", lambda: "value") == "value"


PARSE_MEMORY_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from data.config import SplitSpec
from data.datasets import read_coco

def mib(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024

def peak_of(work):
    base = mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current RSS
    out = work()
    return mib("VmHWM") - base, out

path = Path(sys.argv[2])
parse_peak, _ = peak_of(lambda: json.loads(path.read_text()))
build_peak, index = peak_of(lambda: read_coco(SplitSpec(path.parent, path), [1]))
print(json.dumps({"parse_peak": parse_peak, "build_peak": build_peak, "index": index.nbytes() / 2**20,
                  "n": len(index.classes)}))
"""


def _clear_refs_writable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _clear_refs_writable(), reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
def test_a_cold_coco_build_peaks_at_the_parse_plus_twice_the_index(tmp_path):
    """A cold COCO build peaks at the JSON parser's own peak plus at most twice the finished index:
    nothing taken out of the parsed JSON (the annotation ids, say) keeps the parser's memory while
    the instances are checked. (A list of the JSON's int objects did: they lie in every arena of
    the parse, and an arena goes back only when empty; on full COCO that was 3.8 GB against 2.9.)"""
    photo = next((BUNDLED / "images").glob("*.jpg"))
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in range(2000)]
    for im in images:
        (tmp_path / im["file_name"]).symlink_to(photo)
    anns = [{"id": 10**6 + k, "image_id": k % 2000, "category_id": 1, "iscrowd": 0, "area": 100.0,
             "bbox": [10.5 + (k // 2000) * 0.5, 20.25, 100.0, 80.0],
             "segmentation": [[v for j in range(20) for v in (10.5 + (k // 2000) * 0.5 + 3.25 * j, 20.25 + j % 5)]]}
            for k in range(150000)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    del images, anns
    r = subprocess.run([sys.executable, "-c", PARSE_MEMORY_CHILD, str(ROOT), str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["n"] == 150000 and m["parse_peak"] > 150, m  # the parse itself holds a few hundred MiB
    assert m["build_peak"] <= m["parse_peak"] + 2 * m["index"], m
