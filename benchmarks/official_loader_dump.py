"""Run under the official YOLOv5 code's Python (a separate venv, never this project's): write the
batches its training loader makes, augmentation included, for benchmarks/finetune_official_loader.py.

    python benchmarks/official_loader_dump.py --repo YOLOV5_CHECKOUT --images DIR --hyp HYP.yaml \
        --epochs 3 --seed 1 --out DIR

Writes DIR/e{epoch}_b{batch}.npz (images: uint8 RGB NCHW; targets: [image, class, cx, cy, w, h],
normalised, as the official loader yields them) and DIR/meta.json. Imports nothing of gradpath:
the official loader is used through its public class, not copied.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import yaml


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True,
                   help="a checkout of the official YOLOv5 repository (v7.0 or master)")
    p.add_argument("--images", type=Path, required=True, help="training images; labels/ beside images/, YOLO txt")
    p.add_argument("--hyp", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    from utils.dataloaders import LoadImagesAndLabels  # the official package, from --repo

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    hyp = yaml.safe_load(args.hyp.read_text())
    dataset = LoadImagesAndLabels(str(args.images), args.img_size, args.batch_size, augment=True, hyp=hyp,
                                  rect=False, stride=32, prefix="")
    order = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0,
                                         collate_fn=LoadImagesAndLabels.collate_fn, generator=order)
    args.out.mkdir(parents=True, exist_ok=True)
    for epoch in range(args.epochs):
        for i, (images, targets, _, _) in enumerate(loader):
            np.savez(args.out / f"e{epoch}_b{i}.npz", images=images.numpy(), targets=targets.numpy())
    meta = {"epochs": args.epochs, "batches": len(loader), "images": len(dataset), "seed": args.seed,
            "img_size": args.img_size}
    (args.out / "meta.json").write_text(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
