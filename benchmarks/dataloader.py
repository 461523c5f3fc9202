#!/usr/bin/env python
"""Data-loading throughput: training images/s with mosaic at 640 for 0, 1 and 2 workers, and
validation images/s (letterbox, rectangular batches), plus the peak memory of the whole process
tree: RSS summed over the processes (shared pages counted once per process) and PSS (counted once).

    python benchmarks/dataloader.py                      # coco128 from ../shared/data if present
    python benchmarks/dataloader.py --data cfg/data/coco-mini.yaml --batches 8
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.config import load_data_config  # noqa: E402
from data.loader import build_dataloader  # noqa: E402
from benchmarks.harness.speed import loader_rate  # noqa: E402
from engine.config import Hyp  # noqa: E402

COCO128 = ROOT.parent / "shared/data/dev/coco128_instances"


def default_data() -> str:
    """coco128 with its annotations copied to a temporary folder, so that the label index and a
    disk cache are written there and not into the shared data."""
    if not COCO128.is_dir():
        return str(ROOT / "cfg/data/coco-mini.yaml")
    tmp = Path(tempfile.mkdtemp())
    ann = tmp / "annotations/instances_train2017.json"
    ann.parent.mkdir()
    shutil.copy(COCO128 / "annotations/instances_train2017.json", ann)
    split = {"images": str(COCO128 / "images/train2017"), "annotations": str(ann)}
    out = tmp / "coco128.yaml"
    out.write_text(yaml.safe_dump({"format": "coco", "path": str(tmp), "train": split, "val": split}))
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=80, help="batches timed per setting (after the first)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", choices=["ram", "disk"], default=None, help="decoded, resized images cached (filled first)")
    args = p.parse_args()
    cfg = load_data_config(args.data or default_data())
    aug = Hyp.load().aug
    print(f"data={cfg.source} img={args.img_size} batch={args.batch_size} cache={args.cache} "
          "(mosaic, segment labels)")
    print(f"{'loader':<22}{'workers':>8}{'img/s':>10}{'peak RSS GiB':>14}{'peak PSS GiB':>14}")
    for w in args.workers:
        loader, _ = build_dataloader(cfg, "train", args.img_size, args.batch_size, aug, shuffle=True,
                                     workers=w, cache=args.cache)
        ips, rss, pss = loader_rate(loader, args.batches, memory=True)
        print(f"{'train (mosaic)':<22}{w:>8}{ips:>10.1f}{rss / 2**30:>14.2f}{pss / 2**30:>14.2f}")
        del loader
    for w in args.workers:
        loader, _ = build_dataloader(cfg, "val", args.img_size, args.batch_size, rect=True, workers=w,
                                     cache=args.cache)
        ips, rss, pss = loader_rate(loader, args.batches, memory=True)
        print(f"{'val (rect)':<22}{w:>8}{ips:>10.1f}{rss / 2**30:>14.2f}{pss / 2**30:>14.2f}")


if __name__ == "__main__":
    main()
