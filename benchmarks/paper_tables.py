#!/usr/bin/env python
"""Validate every checkpoint in a folder and print the paper's Table 8 beside our numbers.

    python benchmarks/paper_tables.py --weights-dir weights --data cfg/data/coco.yaml --device 0

For real numbers this needs converted official weights (python -m models.convert), COCO val2017
and a GPU; on CPU it runs the same code on any data YAML (e.g. the bundled coco-mini).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.config import load_data_config  # noqa: E402
from data.loader import build_dataloader  # noqa: E402
from engine.checkpoint import load_model  # noqa: E402
from engine.eval.evaluator import evaluate  # noqa: E402
from utils.dist import select_device  # noqa: E402

# cfg name -> (GFLOPs, params M or None, AP box, AP mask) as printed in the paper (../shared/PAPER.md)
PAPER = {
    "yolov5l-seg": (147.7, 47.9, 49.1, 40.0), "yolov5x-seg": (265.7, 88.8, 50.9, 41.4),
    "yolor-v3-seg": (194.6, 64.3, 49.5, 40.9), "yolor-prn-seg": (194.6, 64.3, 50.0, 41.0),
    "yolor-csp-seg": (159.0, 54.3, 51.0, 41.1), "yolor-csp-fusion-first-seg": (158.1, None, 50.8, 41.0),
    "yolor-csp-fusion-last-seg": (155.6, None, 50.6, 40.9), "yolor-csp-fusion-none-seg": (154.8, None, 50.5, 40.9),
    "yolor-elan-11-seg": (126.4, None, 50.2, 40.6), "yolor-elan-seg": (143.2, 34.5, 51.4, 41.5),
    "yolor-elan-22-seg": (164.0, None, 51.8, 41.6), "yolor-elan-af-seg": (172.6, 45.9, 53.0, 43.3),
    "yolor-csp-stopgrad-a-seg": (159.0, None, 48.8, 39.5), "yolor-csp-stopgrad-b-seg": (159.0, None, 47.7, 38.7),
    "deep-vovnet-elan-seg": (253.4, None, 53.3, 42.9), "deep-vovnet-elan-csp-seg": (236.5, None, 53.4, 42.9),
}


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def rows(weights_dir: Path, data: str, img_size: int, batch_size: int, device: str) -> list[dict]:
    dev = select_device(device)
    data_cfg = load_data_config(data)
    out = []
    for w in sorted(weights_dir.glob("*.pt")):
        model, ckpt = load_model(w, dev, fuse=True)
        name = str(ckpt["config"]["model"].get("name", w.stem))
        info = model.info(640)
        loader, ds = build_dataloader(data_cfg, "val", img_size, batch_size, rect=True, workers=4,
                                      stride=int(max(model.stride)))
        res = evaluate(model, loader, ds, dev, half=dev.type == "cuda", retina_masks=True)
        out.append({"weights": w.name, "cfg": name, "gflops": info["gflops"], "params": info["params"] / 1e6,
                    "ap_box": 100 * res.box["AP"], "ap_mask": 100 * res.mask.get("AP", 0.0), "paper": PAPER.get(name)})
    return out


def table(results: list[dict]) -> str:
    lines = ["| weights | cfg | GFLOPs (paper) | params M (paper) | AP box (paper) | AP mask (paper) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        p = r["paper"] or (None, None, None, None)
        lines.append(f"| {r['weights']} | {r['cfg']} | {r['gflops']:.1f} ({fmt(p[0], '.1f')}) | "
                     f"{r['params']:.2f} ({fmt(p[1], '.1f')}) | {r['ap_box']:.1f} ({fmt(p[2], '.1f')}) | "
                     f"{r['ap_mask']:.1f} ({fmt(p[3], '.1f')}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--data", default="cfg/data/coco.yaml")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="")
    args = p.parse_args()
    results = rows(Path(args.weights_dir), args.data, args.img_size, args.batch_size, args.device)
    if not results:
        sys.exit(f"paper_tables.py: no *.pt in {args.weights_dir}")
    print(table(results))


if __name__ == "__main__":
    main()
