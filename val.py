#!/usr/bin/env python
"""Validate a checkpoint on a dataset (COCO AP^box and AP^mask), or score a results file.

    python val.py --weights runs/train/exp/weights/best.pt --data cfg/data/coco.yaml
    python val.py --weights best.pt --task speed            # ms per image: pre-process, inference, NMS
    python val.py --ann-json instances_val2017.json --pred-json predictions.json   # no model, no torch
    python val.py --task track --gt gt/gt.txt --tracks runs/detect/exp/tracks/clip.txt   # MOTA, IDF1, HOTA
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.cli_args import ArgumentParser, add_img_size, at_least, batch_size, device, number_in


def build_parser() -> ArgumentParser:
    """val.py's command line (tests read its options from here)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="gradpath or official YOLOv5/YOLOv7 checkpoint (.pt), or an "
                   "export: .onnx, *_openvino_model/, .torchscript, .engine")
    p.add_argument("--data", default="", help="dataset YAML (default: the one the checkpoint was trained on)")
    p.add_argument("--batch-size", "--batch", type=batch_size, default=32,
                   help="images per batch; rectangular batches are shaped by their images, so AP depends on it "
                        "(32, as the official val.py)")
    add_img_size(p, help="default: the training size; rounded up to the model's stride")
    p.add_argument("--conf-thres", type=number_in(0.0, 1.0), default=0.001)
    p.add_argument("--iou-thres", type=number_in(0.0, 1.0), default=0.65, help="NMS IoU")
    p.add_argument("--max-det", type=at_least(1), default=300)
    p.add_argument("--task", choices=["val", "test", "speed", "track"], default="val",
                   help="track: score --tracks against --gt (MOT files), no model")
    p.add_argument("--device", type=device, default="", help="cpu or a CUDA index such as 0 (of a list, the first)")
    p.add_argument("--workers", type=at_least(0), default=4)
    p.add_argument("--half", action="store_true", help="FP16 on CUDA; OpenVINO models in bf16 where the CPU has it")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (each new batch shape compiles once)")
    p.add_argument("--retina-masks", action="store_true", help="masks decoded at full resolution")
    p.add_argument("--save-json", action="store_true", help="write predictions.json (COCO results, RLE masks)")
    p.add_argument("--save-txt", action="store_true", help="write labels/*.txt (class cx cy w h conf, normalised)")
    p.add_argument("--verbose", action="store_true", help="per-class AP")
    p.add_argument("--single-cls", action="store_true",
                   help="class-agnostic scoring of a one-class model (implied when it was trained with --single-cls)")
    p.add_argument("--project", default="runs/val")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--ann-json", default="", help="score an existing results file against this COCO JSON")
    p.add_argument("--pred-json", default="", help="COCO results file to score (with --ann-json)")
    p.add_argument("--gt", default="", help="--task track: MOT ground truth (frame,id,x,y,w,h,consider,class,visibility)")
    p.add_argument("--tracks", default="", help="--task track: MOT tracker output, e.g. detect.py --track --save-txt's")
    p.add_argument("--min-vis", type=number_in(0.0, 1.0), default=0.0,
                   help="--task track: ground truth less visible than this is ignored")
    p.add_ignored("--save-conf", instead="--save-txt lines always end with the confidence")
    p.add_ignored("--dnn", instead="an .onnx model runs through onnxruntime")
    p.add_ignored("--no-trace", instead="models are never traced")
    p.add_ignored("--v5-metric", instead="AP is COCO's 101-point interpolation (pycocotools / faster-coco-eval)")
    p.add_refused("--augment", reason="test-time augmentation is not available here")
    p.add_refused("--save-hybrid", reason="not available here (it writes ground truth into the predicted labels)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def score_files(ann_json: str, pred_json: str) -> int:
    """The model-free path: imports no torch."""
    from engine.eval.coco_eval import EvaluationError, format_tables, score

    try:
        print(format_tables(score(ann_json, pred_json, iou_types=None)))  # segm when the results have masks
    except (EvaluationError, OSError) as e:
        print(f"val.py: error: {e}", file=sys.stderr)
        return 2
    return 0


def score_tracks(gt: str, tracks: str, min_vis: float) -> int:
    """--task track: MOT metrics of one tracker file against its ground truth (TrackEval)."""
    from engine.eval.mot import MotFileError, evaluate, read_mot

    try:
        print(evaluate(read_mot(gt), read_mot(tracks), min_visibility=min_vis).table())
    except MotFileError as e:
        print(f"val.py: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.task == "track" or args.gt or args.tracks:
        if not (args.task == "track" and args.gt and args.tracks):
            print("val.py: error: --task track, --gt and --tracks go together", file=sys.stderr)
            return 2
        return score_tracks(args.gt, args.tracks, args.min_vis)
    if args.ann_json or args.pred_json:
        if not (args.ann_json and args.pred_json):
            print("val.py: error: --ann-json and --pred-json go together", file=sys.stderr)
            return 2
        return score_files(args.ann_json, args.pred_json)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from engine.eval.validate import run_validation

    return run_validation(args)


if __name__ == "__main__":
    sys.exit(main())
