#!/usr/bin/env python
"""Export a checkpoint to ONNX (checked against PyTorch with onnxruntime).

    python export.py --weights runs/train/exp/weights/best.pt --format onnx [--dynamic] [--img-size 640]
"""
from __future__ import annotations

import argparse
import logging
import sys

from utils.cli_args import ArgumentParser, add_img_size, device


def build_parser() -> ArgumentParser:
    """export.py's command line (tests read its options from here)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="gradpath or official YOLOv5/YOLOv7 checkpoint (.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    add_img_size(p, help="default: the training size; rounded up to the model's stride")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--half", action="store_true", help="FP16 (needs --device 0)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--out", default=None, help="output path (default: weights with .onnx)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    from engine.export.onnx import export_onnx
    from utils.errors import CheckpointError

    try:
        out, diff = export_onnx(args.weights, args.img_size, args.dynamic, args.half, args.opset, args.out,
                                args.device)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {out} (onnxruntime vs PyTorch max abs diff {diff:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
