#!/usr/bin/env python
"""End-to-end video throughput of detect.py's pipeline: decode, letterbox, inference, postprocess
(NMS + masks), drawing and encoding, with the share of time spent outside the model.

    python benchmarks/video.py                                  # small cfg, car-detection.mp4, 640, CPU
    python benchmarks/video.py --video clip.mp4 --weights best.pt --img-size 640 --frames 200

Without --weights a randomly initialised gp-n-seg is used, its head scaled so that it keeps a
realistic number of detections (max-det 30) and the drawing and mask work is really done.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.infer.predictor import PredictOptions, Predictor  # noqa: E402
from models.model import build_model  # noqa: E402
from utils.io import save_checkpoint  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared/data/videos/car-detection.mp4"


def random_weights(out: Path, cfg: str) -> Path:
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for conv in model.head.m:
            conv.weight.mul_(30.0)
            conv.bias.zero_()
    names = [str(i) for i in range(model.nc)]
    return save_checkpoint({"model": model.state_dict(), "ema": None,
                            "config": {"model": model.yaml, "nc": model.nc, "names": names, "img_size": 640}}, out)


class TimedBackend:
    """The predictor's backend, with the seconds spent inside the model summed (synchronised on GPU)."""

    def __init__(self, backend):
        self.backend, self.seconds = backend, 0.0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __call__(self, x):
        t = time.perf_counter()
        out = self.backend(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t
        return out


def clip(video: Path, out: Path, frames: int) -> Path:
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    writer = None
    for _ in range(frames):
        ok, img = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, img.shape[1::-1])
        writer.write(img)
    cap.release()
    if writer is not None:
        writer.release()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--weights", default="")
    p.add_argument("--cfg", default=str(ROOT / "cfg/models/gp-n-seg.yaml"))
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--conf-thres", type=float, default=0.25)
    p.add_argument("--max-det", type=int, default=30)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    weights = args.weights or str(random_weights(tmp / "w.pt", args.cfg))
    source = args.video
    if args.frames:  # a clip of the first N frames, so the run is detect.py's own path end to end
        source = str(clip(Path(args.video), tmp / "clip.mp4", args.frames))
    opt = PredictOptions(weights=weights, source=source, img_size=args.img_size, device=args.device,
                         conf_thres=args.conf_thres, max_det=args.max_det, project=str(tmp), name="bench")
    pred = Predictor(opt)
    timed = TimedBackend(pred.backend)
    pred.backend = timed
    summary = pred.run()
    total, n = summary["seconds"], summary["frames"]
    model_s = timed.seconds
    cap = cv2.VideoCapture(args.video)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    print(f"{Path(args.video).name} {w}x{h}, {n} frames, img-size {args.img_size}, device {args.device}, "
          f"threads {torch.get_num_threads()}, {summary['detections'] / max(n, 1):.1f} detections/frame")
    print(f"end-to-end {n / total:.2f} fps ({total / n * 1e3:.1f} ms/frame); model {model_s / n * 1e3:.1f} ms/frame; "
          f"outside the model {100 * (1 - model_s / total):.1f}% of the time")


if __name__ == "__main__":
    main()
