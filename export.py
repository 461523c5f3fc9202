#!/usr/bin/env python
"""Export a checkpoint to ONNX, OpenVINO, TorchScript or TensorRT, each checked against PyTorch.

    python export.py --weights best.pt                                   # best.onnx (raw outputs)
    python export.py --weights best.pt --include onnx openvino torchscript
    python export.py --weights best.pt --include onnx --nms               # NMS and masks in the graph
    python export.py --weights best.pt --include openvino --int8 --data cfg/data/coco-mini.yaml
    python export.py --weights best.pt --include engine --half --device 0  # TensorRT, on the GPU
"""
from __future__ import annotations

import argparse
import logging
import sys

from engine.export.formats import FORMATS
from utils.cli_args import ArgumentParser, add_img_size, at_least, batch_size, device, number_in


def build_parser() -> ArgumentParser:
    """export.py's command line (tests read its options from here). The shared types check the
    flags every CLI has; engine.export.options checks the rest (and these again, for API callers)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="gradpath or official YOLOv5/YOLOv7 checkpoint (.pt)")
    p.add_argument("--include", nargs="+", choices=FORMATS, default=None, metavar="FORMAT",
                   help=f"formats to write, several at once: {', '.join(FORMATS)} (YOLOv5's flag)")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="one format (when --include is not given)")
    add_img_size(p, help="default: the training size; rounded up to the model's stride")
    p.add_argument("--batch-size", "--batch", type=batch_size, default=1, help="the batch of a static export")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--half", action="store_true", help="FP16 (ONNX and TensorRT need --device 0; OpenVINO runs here)")
    p.add_argument("--int8", action="store_true", help="INT8 post-training quantization (OpenVINO by NNCF, TensorRT)")
    p.add_argument("--data", default=None,
                   help="--int8: dataset YAML to calibrate on (its train split; default the bundled set) and, "
                        "when it has a val split, to print the INT8 AP against PyTorch")
    p.add_argument("--fraction", type=float, default=1.0, help="--int8: share of the calibration split used")
    p.add_argument("--nms", "--end2end", action="store_true",
                   help="end-to-end graph: decoding, NMS (the ONNX NonMaxSuppression op), top K and masks inside")
    p.add_argument("--include-nms", action="store_true", help="YOLOv7's flag: the same as --nms")
    p.add_argument("--topk-all", type=at_least(1), default=100, help="--nms: detections kept per image")
    p.add_argument("--iou-thres", type=number_in(0.0, 1.0), default=0.45, help="--nms: NMS IoU")
    p.add_argument("--conf-thres", type=number_in(0.0, 1.0), default=0.25, help="--nms: score threshold")
    p.add_argument("--multi-label", action="store_true", help="--nms: a box may keep several classes (val.py's AP setting)")
    p.add_argument("--simplify", action="store_true", help="simplify the ONNX graph with onnxslim")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT builder memory, GB")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--out", default=None, help="the .onnx path; other formats go beside it (default: beside --weights)")
    p.add_ignored("--grid", instead="every export decodes the grid inside the graph (YOLOv7's --grid output)")
    p.add_ignored("--dynamic-batch", instead="an --nms graph always takes any batch; --dynamic frees a raw one's")
    p.add_ignored("--max-wh", nargs=1, instead="NonMaxSuppression runs per class in the graph: no box offsets")
    p.add_ignored("--inplace", instead="the decoding never writes into the head's outputs")
    p.add_ignored("--verbose", instead="TensorRT's builder logs warnings and errors")
    p.add_ignored("--cache", nargs=1, instead="each TensorRT build times its layers afresh (no timing cache)")
    p.add_ignored("--agnostic-nms", instead="it sets YOLOv5's TensorFlow NMS; the --nms graph's is class-aware")
    p.add_ignored("--topk-per-class", nargs=1, instead="it sets YOLOv5's TensorFlow NMS; --topk-all caps the --nms graph")
    for flag, fmt in (("--keras", "TensorFlow"), ("--per-tensor", "TensorFlow"), ("--mlmodel", "CoreML"),
                      ("--fp16", "CoreML"), ("--optimize", "TorchScript for mobile")):
        p.add_refused(flag, reason=f"{fmt} is not exported here (--include: {', '.join(FORMATS)})")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def accepted_flags(args: argparse.Namespace) -> list[str]:
    """One warning per flag that does something other than its user may expect, saying what we do
    (--grid, which does nothing, warns from the parser)."""
    notes = []
    if args.include_nms:
        notes.append("--include-nms: exported as --nms: the standard ONNX NonMaxSuppression op (onnxruntime, "
                     "OpenVINO and TensorRT run it), not YOLOv7's EfficientNMS_TRT plugin")
    if args.data and not args.int8:
        notes.append(f"--data {args.data}: used with --int8 only (calibration and the AP check); ignored")
    return notes


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.include and args.format != "onnx":
        print("export.py: error: --format and --include both name formats; give one", file=sys.stderr)
        return 2
    for note in accepted_flags(args):
        print(f"export.py: warning: {note}", file=sys.stderr)
    from engine.export.checks import CheckFailed, ExportError
    from engine.export.exporter import export
    from engine.export.options import ExportOptions
    from utils.errors import CheckpointError, ConfigError, error_line

    opt = ExportOptions(weights=args.weights, include=tuple(args.include or [args.format]), img_size=args.img_size,
                        batch_size=args.batch_size, dynamic=args.dynamic, half=args.half, int8=args.int8,
                        data=args.data if args.int8 else None, fraction=args.fraction,
                        nms=args.nms or args.include_nms, topk_all=args.topk_all, iou_thres=args.iou_thres,
                        conf_thres=args.conf_thres, multi_label=args.multi_label, simplify=args.simplify,
                        opset=args.opset, device=args.device, workspace=args.workspace, out=args.out)
    try:
        files = export(opt)
    except CheckFailed as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    except (ExportError, CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"export.py: error: {error_line(e)}", file=sys.stderr)
        return 2
    for e in files:
        print(f"exported {e.path} ({e.format} {e.precision}: {e.check})")
        if e.ap:
            print(e.ap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
