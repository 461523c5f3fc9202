#!/usr/bin/env python
"""Seconds to score bbox and segm COCO results: our default backend (faster-coco-eval) against
pycocotools, in the same run, with a check that all 12 stats are identical.

    python benchmarks/coco_eval.py                         # coco128 (../shared/data) x4 images
    python benchmarks/coco_eval.py --repeat 8 --dets 100 300

Ground truth: real COCO annotations, the images repeated under new ids to scale the count.
Predictions: each ground-truth instance jittered (box and RLE mask) plus random false positives,
topped up to exactly N detections per image with random scores.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.eval.coco_eval import STAT_NAMES, load_gt, score  # noqa: E402

COCO128 = ROOT.parent / "shared/data/dev/coco128_instances/annotations/instances_train2017.json"
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", default=str(COCO128 if COCO128.is_file() else MINI))
    p.add_argument("--repeat", type=int, default=4, help="repeat the images this many times")
    p.add_argument("--dets", type=int, nargs="+", default=[100, 300], help="detections per image")
    args = p.parse_args()
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
