#!/usr/bin/env python
"""Fine-tuning onto a few of the checkpoint's classes, with and without the class carry-over.

    python benchmarks/class_carryover.py                     # yolov5n.pt; person, car, dog; 1 epoch at 640
    python benchmarks/class_carryover.py --classes person car dog --epochs 1 --img-size 640 --out /tmp/carry

The training set is coco128's images that hold one of --classes, their annotations cut to those
classes; the validation set is coco_dev32's 32 images (its train and val JSONs merged), scored
against their COCO ground truth cut to the same classes. For each variant (carry: the head's box,
objectness and mask rows and the rows of the shared class names are kept; fresh: the class rows
start afresh, as the official tools start a head with a new class count, box and objectness rows
included) the script builds the run as train.py does, scores the model before training, trains
--epochs with YOLOv5's hyp.scratch-low, and scores best.pt after. Prints a Markdown table and
writes --out/class_carryover.json. Needs ../shared (the official checkpoint and the COCO samples).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.io import atomic_write_text  # noqa: E402

SHARED = ROOT.parent / "shared"
DEV = SHARED / "data/dev"


def cut_to_classes(coco: dict, names: list[str], only_with_them: bool) -> dict:
    """A COCO dict whose categories are `names` (in that order) and whose annotations are theirs;
    with only_with_them, only the images that hold one of them (crowd regions included)."""
    by_name = {c["name"]: c for c in coco["categories"]}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"--classes: {', '.join(missing)} not among the COCO categories")
    keep = {by_name[n]["id"] for n in names}
    anns = [a for a in coco["annotations"] if a["category_id"] in keep]
    with_them = {a["image_id"] for a in anns}
    images = [im for im in coco["images"] if not only_with_them or im["id"] in with_them]
    return {**coco, "categories": [by_name[n] for n in names], "images": images, "annotations": anns}


def write_data(out: Path, names: list[str]) -> Path:
    """The dataset YAML (our COCO mapping form): coco128 cut to `names` for training, coco_dev32
    (train + val images) cut to `names` for validation."""
    coco128 = DEV / "coco128_instances"
    train = cut_to_classes(json.loads((coco128 / "annotations/instances_train2017.json").read_text()), names, True)
    parts = [json.loads((DEV / f"coco_dev32/annotations/instances_{s}.json").read_text()) for s in ("train", "val")]
    dev = {**parts[0], "images": parts[0]["images"] + parts[1]["images"],
           "annotations": parts[0]["annotations"] + parts[1]["annotations"]}
    val = cut_to_classes(dev, names, False)
    atomic_write_text(out / "train.json", json.dumps(train))
    atomic_write_text(out / "val.json", json.dumps(val))
    data = {"format": "coco", "path": str(out),
            "train": {"images": str(coco128 / "images/train2017"), "annotations": str(out / "train.json")},
            "val": {"images": str(DEV / "coco_dev32/images"), "annotations": str(out / "val.json")}}
    atomic_write_text(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    print(f"train: {len(train['images'])} coco128 images, {len(train['annotations'])} instances of {', '.join(names)}; "
          f"val: {len(val['images'])} coco_dev32 images, {len(val['annotations'])} instances")
    return out / "data.yaml"


def run_variant(args, data: Path, carry: bool) -> dict:
    """Box and mask AP before and after fine-tuning, with or without the carry-over."""
    from engine.config import TrainOptions
    from engine.train.build import build_trainer
    from engine.train.hooks import EMAHook, EvalHook

    name = "carry" if carry else "fresh"
    opt = TrainOptions(weights=str(args.weights), data=str(data), hyp=str(args.hyp), epochs=args.epochs,
                       batch_size=args.batch_size, img_size=args.img_size, workers=args.workers, device=args.device,
                       seed=args.seed, project=str(args.out), name=name, exist_ok=True, noplots=True,
                       class_carryover=carry)
    trainer = build_trainer(opt)
    evaluate = next(h for h in trainer.hooks if isinstance(h, EvalHook)).evaluate
    ema = next(h for h in trainer.hooks if isinstance(h, EMAHook)).ema
    before = evaluate(ema.ema).summary()
    t0 = time.time()
    after = trainer.fit()
    return {"before": before, "after": {k: v for k, v in after.items() if k.startswith("metrics/")},
            "train_seconds": round(time.time() - t0, 1)}


def table(results: dict, names: list[str]) -> str:
    """Markdown: box (and, for a segmentation checkpoint, mask) AP before and after, per variant."""
    keys = [("box AP50-95", "metrics/box_AP"), ("box AP50", "metrics/box_AP50")]
    if any("metrics/mask_AP" in r["after"] for r in results.values()):
        keys.append(("mask AP50-95", "metrics/mask_AP"))
    rows = ["| head rows from the checkpoint | " + " | ".join(f"{k} before | after" for k, _ in keys) + " |",
            "|---|" + "---|" * 2 * len(keys)]
    label = {"carry": f"box, objectness, mask + the rows of {', '.join(names)} (carry-over)",
             "fresh": "none of the prediction convs (`--no-class-carryover`, as the official tools)"}
    for name, r in results.items():
        cells = [f"{r['before'][k]:.3f} | {r['after'][k]:.3f}" for _, k in keys]
        rows.append(f"| {label[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=SHARED / "official/yolov5n.pt")
    p.add_argument("--hyp", type=Path, default=SHARED / "official/hyp/yolov5-hyp.scratch-low.yaml")
    p.add_argument("--classes", nargs="+", default=["person", "car", "dog"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench/class_carryover")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    data = write_data(args.out, args.classes)
    results = {name: run_variant(args, data, carry) for name, carry in (("carry", True), ("fresh", False))}
    text = table(results, args.classes)
    atomic_write_text(args.out / "class_carryover.json",
                      json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
