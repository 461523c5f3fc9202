"""COCO scoring: parity with pycocotools on perturbed real ground truth, perfect predictions,
category-id mapping, empty predictions, bad results files, and postprocess round trips."""
from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from data.augment import letterbox
from engine.eval.coco_eval import STAT_NAMES, EvaluationError, score
from utils.masks import decode_masks, encode_rle
from utils.postprocess import postprocess

MINI_VAL = ROOT / "datasets/coco-mini/annotations/instances_val.json"


def _gt_results(ann: Path, perturb: bool, seed: int = 0) -> list[dict]:
    """Predictions from ground truth: boxes and RLE masks, perturbed, extra scores and false positives."""
    import pycocotools.mask as mu
    from pycocotools.coco import COCO

    rng = random.Random(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    cats = gt.getCatIds()
    out = []
    for a in gt.dataset["annotations"]:
        if a.get("iscrowd"):
            continue
        img = gt.imgs[a["image_id"]]
        rle = gt.annToRLE(a)
        x, y, w, h = a["bbox"]
        copies = 2 if perturb else 1
        for k in range(copies):
            j = (lambda s: rng.uniform(-s, s)) if perturb else (lambda s: 0.0)
            box = [x + j(0.1) * w, y + j(0.1) * h, w * (1 + j(0.15)), h * (1 + j(0.15))]
            m = mu.decode(rle)
            if perturb and k:
                m = np.roll(m, rng.randint(-3, 3), axis=1)
            r = mu.encode(np.asfortranarray(m))
            r["counts"] = r["counts"].decode()
            out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
                        "score": rng.random() if perturb else 1.0, "segmentation": r})
        if perturb and rng.random() < 0.3:  # a false positive of another class
            out.append({"image_id": a["image_id"], "category_id": rng.choice(cats),
                        "bbox": [rng.uniform(0, img["width"] / 2), rng.uniform(0, img["height"] / 2), 30, 40],
                        "score": rng.random(), "segmentation": out[-1]["segmentation"]})
    return out


def _pycocotools(ann: Path, dets: list[dict], iou_type: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(dets))), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
@pytest.mark.parametrize("ann_name", ["mini", "shared"])
def test_stats_equal_pycocotools(ann_name, backend, request):
    if ann_name == "mini":
        ann = MINI_VAL
    else:
        ann = request.getfixturevalue("shared_data") / "dev/coco128_instances/annotations/instances_train2017.json"
    dets = _gt_results(ann, perturb=True)
    ours = score(ann, dets, backend=backend)
    for iou_type in ("bbox", "segm"):
        ref = _pycocotools(ann, dets, iou_type)
        got = np.array([ours[iou_type]["stats"][n] for n in STAT_NAMES])
        assert np.allclose(got, ref, atol=1e-6), iou_type
        assert 0.05 < got[0] < 0.99


def test_default_backend_is_the_fast_one():
    from engine.eval.coco_eval import default_backend

    assert default_backend() == "faster"


def test_perfect_predictions_score_one():
    ours = score(MINI_VAL, _gt_results(MINI_VAL, perturb=False))
    assert ours["bbox"]["stats"]["AP"] == pytest.approx(1.0) and ours["segm"]["stats"]["AP"] == pytest.approx(1.0)


def test_category_ids_not_1_to_80(tmp_path):
    data = json.loads(MINI_VAL.read_text())
    remap = {c["id"]: 1000 + 7 * c["id"] for c in data["categories"]}
    for c in data["categories"]:
        c["id"] = remap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    ann = tmp_path / "remapped.json"
    ann.write_text(json.dumps(data))
    ours = score(ann, _gt_results(ann, perturb=False), ("bbox",))
    assert ours["bbox"]["stats"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_class_agnostic_scoring_for_single_class_models(backend):
    """Perfect boxes all labelled with one category: per-category AP is low, class-agnostic AP
    (what a --single-cls model is scored by) is 1; both backends agree."""
    dets = _gt_results(MINI_VAL, perturb=False)
    first = min(d["category_id"] for d in dets)
    one_label = [{**d, "category_id": first} for d in dets]
    per_cat = score(MINI_VAL, one_label, ("bbox", "segm"), backend=backend)
    agnostic = score(MINI_VAL, one_label, ("bbox", "segm"), backend=backend, use_cats=False)
    assert per_cat["bbox"]["stats"]["AP"] < 0.5
    for kind in ("bbox", "segm"):
        assert agnostic[kind]["stats"]["AP"] == pytest.approx(1.0)
        assert list(agnostic[kind]["per_class"].values()) == [pytest.approx(1.0)]  # one row: all classes


def test_empty_and_inconsistent_results(tmp_path):
    ours = score(MINI_VAL, [])
    assert ours["bbox"]["stats"]["AP"] == 0.0 and ours["segm"]["stats"]["AR100"] == 0.0
    with pytest.raises(EvaluationError, match=r"results\[0\]: image_id 123456789 is not in"):
        score(MINI_VAL, [{"image_id": 123456789, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(EvaluationError, match="category_id 999"):
        score(MINI_VAL, [{"image_id": 204805, "category_id": 999, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_val_py_scores_files_without_torch(tmp_path):
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps(_gt_results(MINI_VAL, perturb=False)))
    code = ("import runpy, sys; sys.argv=['val.py','--ann-json',sys.argv[1],'--pred-json',sys.argv[2]]\n"
            "try:\n    runpy.run_path(sys.argv[0] if False else %r, run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'val.py --ann-json imported torch'\n") % str(ROOT / "val.py")
    r = subprocess.run([sys.executable, "-c", code, str(MINI_VAL), str(pred)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "= 1.000" in r.stdout


def test_postprocess_maps_boxes_and_masks_back_to_original():
    """A synthetic prediction in letterboxed input space lands on the right original pixels."""
    nc, nm = 3, 2
    h0, w0 = 100, 200
    rp = ((0.64, 0.64), (0.0, 32.0))  # 200x100 -> 128x64, padded to 128x128 (top 32)
    box_orig = torch.tensor([50.0, 20.0, 150.0, 80.0])
    box_in = box_orig * 0.64 + torch.tensor([0, 32, 0, 32])
    pred = torch.zeros(1, 2, 4 + nc + nm)
    pred[0, 0, :4], pred[0, 0, 4 + 1] = box_in, 0.9
    pred[0, 0, 4 + nc:] = torch.tensor([10.0, 0.0])
    proto = torch.zeros(1, nm, 32, 32)
    proto[0, 0] = 1.0  # all-positive prototype: the mask is exactly the box
    for retina in (False, True):
        d = postprocess(pred, proto, (128, 128), [(h0, w0)], [rp], conf_thres=0.5, retina_masks=retina)[0]
        assert len(d) == 1 and d.classes.item() == 1 and torch.allclose(d.boxes[0], box_orig, atol=1e-3)
        ys, xs = torch.nonzero(d.masks[0], as_tuple=True)
        tol = 2 if retina else 7  # one prototype pixel is 4 input = 6.25 original pixels
        assert abs(xs.min().item() - 50) <= tol and abs(xs.max().item() - 149) <= tol
        assert abs(ys.min().item() - 20) <= tol and abs(ys.max().item() - 79) <= tol


def test_masks_cut_where_the_letterbox_put_the_image():
    """A 427x640 image letterboxed to 448x640 starts at row 10 though its pad is reported as 10.5:
    a mask reaching the image's top edge keeps its top rows (cut at 10.5 it lost them)."""
    h0, w0 = 427, 640
    img, rp = letterbox(np.zeros((h0, w0, 3), np.uint8), 640, auto=True)
    assert img.shape[:2] == (448, 640) and rp[1] == (0.0, 10.5)
    proto = torch.full((1, 1, 112, 160), -10.0)
    proto[0, 0, 2] = 10.0  # prototype row 2 = input rows 8-11: the image's first two rows and padding
    pred = torch.zeros(1, 1, 4 + 1 + 1)
    pred[0, 0, :4] = torch.tensor([0.0, 0.0, 640.0, 448.0])
    pred[0, 0, 4], pred[0, 0, 5] = 0.9, 1.0
    d = postprocess(pred, proto, (448, 640), [(h0, w0)], [rp], conf_thres=0.5)[0]
    rows = d.masks[0].any(1)
    assert rows[0] and not rows[10:].any()


def test_retina_masks_of_a_flat_prototype_are_exactly_the_boxes():
    """With every prototype pixel positive, the retina mask of a box is the original pixels whose
    centre lies in the box, for fractional boxes of every size: the decode crops by pixel centre.
    (Cropping by pixel index, as the mask loss must, would shift it half a pixel right and down.)"""
    g = torch.Generator().manual_seed(0)
    n, rp = 200, ((0.5, 0.5), (0.0, 40.0))  # 640x480 -> 320x240, padded to 320x320 (top 40)
    xy = torch.rand((n, 2), generator=g) * torch.tensor([600.0, 440.0])
    boxes = torch.cat((xy, (xy + 1 + torch.rand((n, 2), generator=g) * 40).minimum(torch.tensor([640.0, 480.0]))), 1)
    masks = decode_masks(torch.ones((n, 1)), torch.ones((1, 80, 80)), boxes * 0.5 + torch.tensor([0, 40.0, 0, 40.0]),
                         (320, 320), (480, 640), rp, retina=True)
    cols, rows = torch.arange(640) + 0.5, torch.arange(480) + 0.5
    x1, y1, x2, y2 = boxes[:, :, None, None].unbind(1)
    inside = (cols >= x1) & (cols < x2) & (rows[:, None] >= y1) & (rows[:, None] < y2)
    assert torch.equal(masks, inside)


def test_rle_roundtrip():
    import pycocotools.mask as mu

    m = np.zeros((2, 20, 30), bool)
    m[0, 2:5, 3:9] = True
    m[1, 10:, 20:] = True
    rles = encode_rle(m)
    assert all(isinstance(r["counts"], str) for r in rles)
    back = np.stack([mu.decode({**r, "counts": r["counts"].encode()}) for r in rles]).astype(bool)
    assert (back == m).all()
    assert decode_masks(torch.zeros(0, 2), torch.zeros(2, 8, 8), torch.zeros(0, 4), (32, 32), (20, 30),
                        ((1.0, 1.0), (0.0, 0.0))).shape == (0, 20, 30)


def test_quick_metrics_and_confusion_matrix():
    from engine.eval.coco_eval import best_f1
    from engine.eval.metrics import ConfusionMatrix

    pr = np.full((101, 3), -1.0)
    pr[:, 0] = 1.0                                       # perfect class
    pr[:, 1] = np.where(np.linspace(0, 1, 101) <= 0.5, 1.0, 0.0)  # precision 1 up to recall 0.5
    m = best_f1(pr)
    assert m["P"] == pytest.approx(1.0) and m["R"] == pytest.approx(0.75)  # class 2 has no ground truth
    cm = ConfusionMatrix(nc=3, conf=0.25, iou=0.45)
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    gt_classes = np.array([0, 1, 2])
    det = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 31], [80, 80, 90, 90], [50, 50, 60, 60]], dtype=torch.float32)
    cm.update(det, torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([0, 2, 1, 2]), gt_boxes, gt_classes)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1   # right class
    expected[2, 1] = 1   # class 1 predicted as 2
    expected[1, 3] = 1   # false positive of class 1
    expected[3, 2] = 1   # class 2 missed (its detection is below the confidence)
    assert (cm.matrix == expected).all()


def test_paper_tables_on_bundled_data(tmp_path):
    """The Table 8 script validates every checkpoint in a folder (here a freshly built gp-n-seg)."""
    from models.model import build_model
    from utils.io import save_checkpoint

    root = ROOT
    model = build_model(root / "cfg/models/gp-n-seg.yaml")
    save_checkpoint({"model": model.state_dict(), "ema": None,
                     "config": {"model": model.yaml, "nc": 80, "names": [str(i) for i in range(80)]}},
                    tmp_path / "weights" / "gp-n-seg.pt")
    r = subprocess.run([sys.executable, str(root / "benchmarks/paper_tables.py"), "--weights-dir", str(tmp_path / "weights"),
                        "--data", str(root / "cfg/data/coco-mini.yaml"), "--img-size", "128", "--batch-size", "8",
                        "--device", "cpu"], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = [line for line in r.stdout.splitlines() if line.startswith("| gp-n-seg.pt")]
    assert row and "| gp-n-seg |" in row[0] and "12.9 (-)" in row[0]
