#!/usr/bin/env python
"""Seconds to score bbox and segm COCO results: our default backend (faster-coco-eval) against
pycocotools, in the same run, with a check that all 12 stats are identical.

    python benchmarks/coco_eval.py                         # coco128 (../shared/data) x4 images
    python benchmarks/coco_eval.py --repeat 8 --dets 100 300
    python benchmarks/coco_eval.py --at-size               # val2017 size: 5,000 images, 1M results
    python benchmarks/coco_eval.py --in-training           # the evaluator's masks at --retina-masks

Ground truth: real COCO annotations, the images repeated under new ids to scale the count.
Predictions: each ground-truth instance jittered (box and RLE mask) plus random false positives,
topped up to exactly N detections per image with random scores.

--at-size scores one results file of val2017's size three ways, each in a process of its own
(seconds from start to exit, peak RSS): `val.py --ann-json --pred-json`, faster-coco-eval called
directly (one loadRes, bbox and segm evaluated from it, as its README does) and pycocotools
called the same way; it prints a markdown table and our ratio to the library we call. The
results there are polygon masks: every ground-truth instance's polygon jittered, then other
instances' shapes placed at random, all RLE-encoded, 200 per image.

--in-training measures the evaluator's own path (engine/eval/evaluator.predict_loader) at
--retina-masks on a stand-in model that finds 300 objects in every 640x480 image (batch 32):
peak RSS of predict_loader, which decodes and RLE-encodes one image's masks at a time, beside
the same images postprocessed a batch at a time (what it did before).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.eval.coco_eval import STAT_NAMES, load_gt, score  # noqa: E402

SHARED_DATA = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data"))
COCO128 = SHARED_DATA / "dev/coco128_instances/annotations/instances_train2017.json"
MINI = ROOT / "datasets/coco-mini/annotations/instances_val.json"


def scaled_gt(src: Path, repeat: int, out: Path) -> dict:
    data = json.loads(src.read_text())
    images, anns = [], []
    for r in range(repeat):
        for im in data["images"]:
            images.append({**im, "id": im["id"] + r * 10**7})
        for a in data["annotations"]:
            anns.append({**copy.deepcopy(a), "id": len(anns) + 1, "image_id": a["image_id"] + r * 10**7})
    big = {**data, "images": images, "annotations": anns}
    out.write_text(json.dumps(big))
    return big


def predictions(gt: dict, per_image: int, seed: int = 0) -> list[dict]:
    import pycocotools.mask as mu

    rng = random.Random(seed)
    by_image: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    cats = [c["id"] for c in gt["categories"]]
    dets = []
    for image_id, anns in by_image.items():
        h, w = size[image_id]
        out = []
        for a in anns[:per_image]:
            x, y, bw, bh = a["bbox"]
            out.append((a["category_id"], [x + rng.uniform(-0.1, 0.1) * bw, y + rng.uniform(-0.1, 0.1) * bh, bw, bh]))
        while len(out) < per_image:
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            out.append((rng.choice(cats), [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]))
        for cat, (x, y, bw, bh) in out:
            m = np.zeros((h, w), np.uint8, order="F")
            m[int(y):int(y + bh), int(x):int(x + bw)] = 1
            rle = mu.encode(m)
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": image_id, "category_id": cat, "bbox": [x, y, bw, bh], "score": rng.random(),
                         "segmentation": rle})
    return dets


def timed(ann: Path, dets: list[dict], backend: str) -> tuple[float, dict]:
    t = time.perf_counter()
    gt = load_gt(ann, backend)
    out = score(ann, dets, ("bbox", "segm"), gt=gt, backend=backend)
    return time.perf_counter() - t, out


# ---- at val2017's size ----------------------------------------------------------------------------
DIRECT = """
import contextlib, io, json, sys
from {module} import COCO
from {evalmodule} import {evalclass} as E
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1])
    dt = gt.loadRes(sys.argv[2])
    stats = {{}}
    for t in ("bbox", "segm"):
        ev = E(gt, dt, t)
        ev.evaluate(); ev.accumulate(); ev.summarize()
        stats[t] = [float(v) for v in ev.stats]
json.dump(stats, open(sys.argv[3], "w"))
"""
LIBRARIES = {"faster-coco-eval": dict(module="faster_coco_eval", evalmodule="faster_coco_eval",
                                      evalclass="COCOeval_faster"),
             "pycocotools": dict(module="pycocotools.coco", evalmodule="pycocotools.cocoeval", evalclass="COCOeval")}
OURS = """
import runpy, sys
sys.argv = [sys.argv[1], "--ann-json", sys.argv[2], "--pred-json", sys.argv[3]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
"""
PEAK = "\nimport resource; print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"


def results_at_size(gt: dict, per_image: int, out: Path, seed: int = 0) -> int:
    """`per_image` results for every image of `gt`, written to `out` (streamed); their count."""
    import pycocotools.mask as mu

    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    shapes = []  # every polygon, relative to its box: the false positives' shapes
    for a in gt["annotations"]:
        if not a.get("iscrowd") and isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6:
            by_image[a["image_id"]].append(a)
            x, y, w, h = a["bbox"]
            shapes.append((np.array(a["segmentation"][0], np.float64).reshape(-1, 2) - [x, y]) / [max(w, 1), max(h, 1)])
    cats = [c["id"] for c in gt["categories"]]
    n = 0
    with out.open("w") as f:
        f.write("[")
        for im in gt["images"]:
            polys, labels, scores = _image_results(by_image[im["id"]], shapes, im, per_image, cats, rng)
            rles = mu.frPyObjects([p.ravel().tolist() for p in polys], im["height"], im["width"])
            boxes = mu.toBbox(rles)
            for r, b, c, sc in zip(rles, boxes, labels, scores):
                f.write(("," if n else "") + json.dumps({
                    "image_id": im["id"], "category_id": int(c), "bbox": [round(float(v), 2) for v in b],
                    "score": round(float(sc), 5), "segmentation": {"size": r["size"], "counts": r["counts"].decode()}}))
                n += 1
        f.write("]")
    return n


def _image_results(anns: list[dict], shapes: list, im: dict, per_image: int, cats: list[int], rng):
    """Polygons, categories and scores of one image's results: the true instances jittered, then
    random shapes at random places."""
    h, w = im["height"], im["width"]
    polys, labels, scores = [], [], []
    for a in anns[:per_image]:
        p = np.array(a["segmentation"][0], np.float64).reshape(-1, 2)
        size = np.array(a["bbox"][2:]) + 1
        polys.append(p + rng.normal(0, 0.03, p.shape) * size + rng.uniform(-0.05, 0.05, 2) * size)
        labels.append(a["category_id"])
        scores.append(rng.uniform(0.3, 1.0))
    for _ in range(per_image - len(polys)):
        bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
        polys.append(shapes[rng.integers(len(shapes))] * [bw, bh] + [rng.uniform(0, w - bw), rng.uniform(0, h - bh)])
        labels.append(cats[rng.integers(len(cats))])
        scores.append(rng.uniform(0.0, 0.6))
    return [np.clip(p, 0, [w - 1, h - 1]) for p in polys], labels, scores


def run_child(code: str, args: list[str]) -> tuple[float, float, str]:
    """(seconds from start to exit, peak RSS MiB, stdout) of `python -c code args`."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code + PEAK, *args], capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{args}: exit {r.returncode}: {r.stderr[-2000:]}")
    peak = int(r.stdout.rsplit("PEAK_KIB", 1)[1].split()[0]) / 1024
    return secs, peak, r.stdout


IN_TRAINING = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from torch import nn
from engine.eval.evaluator import predict_loader, to_coco_results
from utils.postprocess import postprocess
from utils.structures import Batch
mode, images, batch, dets = sys.argv[2], *map(int, sys.argv[3:6])
H, W, NC, NM = 480, 640, 80, 32

class StandIn(nn.Module):
    # `dets` well separated boxes of one class per image, random mask coefficients, random protos
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
    def forward(self, x):
        b, g = x.shape[0], torch.Generator().manual_seed(0)
        k = torch.arange(dets)
        cx, cy = 16 + (k % 20) * 32.0, 96 + (k // 20) * 30.0
        boxes = torch.stack([cx - 12, cy - 12, cx + 12, cy + 12], 1)
        cls = torch.zeros(dets, NC); cls[:, 0] = 0.9
        pred = torch.cat([boxes, cls, torch.randn(dets, NM, generator=g)], 1).expand(b, -1, -1)
        return pred.contiguous(), torch.randn(b, NM, 160, 160, generator=g)

def loader():
    for s in range(0, images, batch):
        n = min(batch, images - s)
        yield Batch(torch.zeros(n, 3, 640, 640, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0, 160, 160, dtype=torch.uint8),
                    list(range(s, s + n)), [""] * n, [(H, W)] * n, [((1.0, 1.0), (0.0, 80.0))] * n)

model, cats = StandIn(), list(range(1, NC + 1))
if mode == "image":
    results, _, _ = predict_loader(model, loader(), torch.device("cpu"), 0.001, 0.65, 300, False, True, cats)
else:  # a batch at a time, as the evaluator did before
    results = []
    with torch.no_grad():
        for bt in loader():
            pred, proto = model(bt.images.float() / 255)
            for d, i in zip(postprocess(pred, proto, (640, 640), bt.orig_shapes, bt.ratio_pads, 0.001, 0.65, 300,
                                        multi_label=True, retina_masks=True), bt.image_ids):
                results += to_coco_results(d, i, cats)
print(len(results), "results")
"""


def in_training(args) -> None:
    print(f"| evaluator at --retina-masks, {args.images} images of 640x480, 300 detections each, batch 32 | "
          f"peak RSS MiB | seconds |\n|---|---:|---:|")
    for mode, name in (("image", "predict_loader: one image's masks at a time"),
                       ("batch", "a batch's masks at a time (before)")):
        secs, peak, out = run_child(IN_TRAINING, [str(ROOT), mode, str(args.images), "32", "300"])
        assert f"{args.images * 300} results" in out, out
        print(f"| {name} | {peak:,.0f} | {secs:.1f} |")


def at_size(args) -> None:
    from benchmarks.simulated_coco import write_repeated_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gt_path, dt_path = out / "gt.json", out / "results.json"
    src = json.loads(Path(args.ann).read_text())
    write_repeated_json(gt_path, src, args.images)
    gt = json.loads(gt_path.read_text())
    n = results_at_size(gt, args.per_image, dt_path)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} annotations; {n} results with RLE masks "
          f"({dt_path.stat().st_size / 2**20:.0f} MB)")
    rows: dict[str, list] = {}
    ours = "gradpath val.py --ann-json --pred-json"
    for _ in range(args.runs):  # interleaved, the fastest of each kept: the machine's load comes and goes
        for name in ["faster-coco-eval", ours] + ([] if args.skip_pycocotools else ["pycocotools"]):
            if name == ours:
                secs, peak, printed = run_child(OURS, [str(ROOT / "val.py"), str(gt_path), str(dt_path)])
            else:
                secs, peak, _ = run_child(DIRECT.format(**LIBRARIES[name]),
                                          [str(gt_path), str(dt_path), str(out / f"{name}.json")])
            best = rows.setdefault(name, [float("inf"), 0.0])
            rows[name] = [min(best[0], secs), max(best[1], peak)]
    ref = json.loads((out / "faster-coco-eval.json").read_text())
    ours = [float(v) for v in re.findall(r"\] = (-?[0-9.]+)", printed)]
    same = ours == [round(v, 3) for t in ("bbox", "segm") for v in ref[t]]
    fs, fp = rows["faster-coco-eval"]
    print(f"\n| scorer ({n:,} results, {len(gt['images']):,} images) | seconds | peak RSS MiB | "
          f"time / faster-coco-eval | memory / faster-coco-eval |\n|---|---:|---:|---:|---:|")
    for name, (secs, peak) in rows.items():
        print(f"| {name} | {secs:.1f} | {peak:,.0f} | {secs / fs:.2f} | {peak / fp:.2f} |")
    print(f"\nbox AP {ref['bbox'][0]:.3f}, mask AP {ref['segm'][0]:.3f}; our 24 printed stats equal "
          f"faster-coco-eval's (to the 3 decimals printed): {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", default=str(COCO128 if COCO128.is_file() else MINI))
    p.add_argument("--repeat", type=int, default=4, help="repeat the images this many times")
    p.add_argument("--dets", type=int, nargs="+", default=[100, 300], help="detections per image")
    p.add_argument("--at-size", action="store_true", help="val2017's size, in processes of their own (see above)")
    p.add_argument("--in-training", action="store_true", help="the evaluator's mask memory (see above)")
    p.add_argument("--images", type=int, default=None, help="--at-size: images (5000); --in-training: (32)")
    p.add_argument("--per-image", type=int, default=200, help="--at-size: results per image")
    p.add_argument("--skip-pycocotools", action="store_true", help="--at-size: not the (slow) pycocotools run")
    p.add_argument("--runs", type=int, default=1, help="--at-size: runs of each scorer (the fastest is shown)")
    p.add_argument("--out", default=str(ROOT / "runs/coco_eval_at_size"), help="--at-size: where the files go")
    args = p.parse_args()
    if args.in_training:
        args.images = args.images or 32
        return in_training(args)
    if args.at_size:
        args.images = args.images or 5000
        return at_size(args)
    tmp = Path(tempfile.mkdtemp())
    gt = scaled_gt(Path(args.ann), args.repeat, tmp / "gt.json")
    print(f"{Path(args.ann).name} x{args.repeat}: {len(gt['images'])} images, {len(gt['annotations'])} annotations")
    print(f"{'dets/img':>9}{'pycocotools s':>15}{'ours s':>9}{'speed-up':>10}  identical")
    for n in args.dets:
        dets = predictions(gt, n)
        t_ref, ref = timed(tmp / "gt.json", dets, "pycocotools")
        t_ours, ours = timed(tmp / "gt.json", dets, "faster")
        same = all(abs(ref[k]["stats"][s] - ours[k]["stats"][s]) <= 1e-12 for k in ref for s in STAT_NAMES)
        print(f"{n:>9}{t_ref:>15.2f}{t_ours:>9.2f}{t_ref / t_ours:>9.1f}x  {same}")


if __name__ == "__main__":
    main()
