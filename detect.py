#!/usr/bin/env python
"""Run a trained model on images, folders, globs, .txt lists, videos, webcams and streams.

    python detect.py                                   # newest runs/train/*/weights/best.pt on the sample images
    python detect.py --weights best.pt --source photos/ --save-txt --save-json
    python detect.py --weights best.pt --source clip.mp4          # same fps and frame count out
    python detect.py --weights best.pt --source 0                 # webcam
    python detect.py --weights model.onnx --source rtsp://host/stream
    python detect.py --weights best.pt --source clip.mp4 --track --conf-thres 0.1 --save-txt   # ids, MOT file
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from utils.cli_args import ArgumentParser, add_img_size, at_least, batch_size, device, number_in

ROOT = Path(__file__).resolve().parent
SAMPLES = ROOT / "datasets" / "coco-mini" / "images"
TRACKERS = ("bytetrack",)  # engine.infer.track.TRACKERS' names (a test holds them equal), without importing it


def build_parser() -> ArgumentParser:
    """detect.py's command line (tests read its options from here)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="gradpath or official YOLOv5/YOLOv7 .pt, or an export: .onnx, "
                   "*_openvino_model/, .torchscript, .engine (default: newest best.pt)")
    p.add_argument("--source", default=str(SAMPLES), help="file, folder, glob, .txt list, video, webcam index or URL")
    add_img_size(p, help="default: the training size; rounded up to the model's stride")
    p.add_argument("--conf-thres", type=number_in(0.0, 1.0), default=0.25)
    p.add_argument("--iou-thres", type=number_in(0.0, 1.0), default=0.45)
    p.add_argument("--max-det", type=at_least(1), default=300)
    p.add_argument("--classes", type=at_least(0), nargs="+", default=None, help="keep only these class indices")
    p.add_argument("--agnostic-nms", action="store_true")
    p.add_argument("--device", type=device, default="", help="cpu or a CUDA index such as 0 (of a list, the first)")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA; OpenVINO models in bf16 where the CPU has it")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the first batch is slower)")
    p.add_argument("--batch-size", "--batch", type=batch_size, default=8, help="images per inference batch (folders)")
    p.add_argument("--save-txt", action="store_true", help="YOLO txt: class + polygon (masks) or box")
    p.add_argument("--save-conf", action="store_true", help="append confidences to --save-txt lines")
    p.add_argument("--save-json", action="store_true", help="predictions.json (COCO results, RLE masks)")
    p.add_argument("--save-crop", action="store_true")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    p.add_argument("--view-img", action="store_true")
    p.add_argument("--retina-masks", action="store_true", help="masks at full resolution")
    p.add_argument("--project", default="runs/detect")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--line-thickness", type=at_least(1), default=None)
    p.add_argument("--hide-labels", action="store_true")
    p.add_argument("--hide-conf", action="store_true")
    p.add_argument("--track", action="store_true",
                   help="persistent ids per video/stream/folder of frames; --save-txt writes MOT files "
                        "(--conf-thres 0.1 gives the tracker its weak detections); a .pt model also gives "
                        "each detection an appearance embedding from its backbone")
    p.add_argument("--tracker", choices=TRACKERS, default=None, help=f"with --track (default {TRACKERS[0]})")
    p.add_ignored("--data", instead="class names come from the checkpoint", nargs=1)
    p.add_ignored("--update", instead="checkpoints hold state_dicts only: nothing to strip")
    p.add_ignored("--dnn", instead="an .onnx model runs through onnxruntime")
    p.add_ignored("--no-trace", instead="models are never traced")
    p.add_refused("--augment", reason="test-time augmentation is not available here")
    p.add_refused("--save-csv", reason="not available here: use --save-json (COCO results) or --save-txt")
    p.add_refused("--save-format", reason="only 0 (YOLO txt) is available here", nargs=1, type=int, accept=[0])
    p.add_refused("--vid-stride", reason="every frame is processed here (only 1 is accepted)", nargs=1, type=int,
                  accept=[1])
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    from engine.infer.predictor import PredictOptions, Predictor
    from engine.infer.sources import SourceError
    from utils.errors import CheckpointError
    from utils.paths import newest

    if args.tracker and not args.track:
        print(f"detect.py: error: --tracker {args.tracker} goes with --track", file=sys.stderr)
        return 2
    args.tracker = args.tracker or TRACKERS[0]
    if not args.weights:
        found = newest("runs/train/*/weights/best.pt")
        if found is None:
            print("detect.py: error: no --weights given and no runs/train/*/weights/best.pt yet; "
                  "train first with `python train.py`", file=sys.stderr)
            return 2
        args.weights = str(found)
        print(f"using {found}")
    try:
        Predictor(PredictOptions(**{f.name: getattr(args, f.name) for f in fields(PredictOptions)})).run()
    except (SourceError, CheckpointError, ValueError, OSError) as e:
        print(f"detect.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
