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

from benchmarks.paper_figures import PAPER  # noqa: E402
from data.config import load_data_config  # noqa: E402
from data.loader import build_dataloader  # noqa: E402
from engine.checkpoint import load_model  # noqa: E402
from engine.eval.evaluator import evaluate  # noqa: E402
from utils.dist import select_device  # noqa: E402

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
        p = r["paper"]
        gflops, params, ap_box, ap_mask = (p.gflops, p.params, p.ap_box, p.ap_mask) if p else (None,) * 4
        lines.append(f"| {r['weights']} | {r['cfg']} | {r['gflops']:.1f} ({fmt(gflops, '.1f')}) | "
                     f"{r['params']:.2f} ({fmt(params, '.1f')}) | {r['ap_box']:.1f} ({fmt(ap_box, '.1f')}) | "
                     f"{r['ap_mask']:.1f} ({fmt(ap_mask, '.1f')}) |")
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
