#!/usr/bin/env python
"""Inference latency of every model cfg, fused, printed as a table (ms per image); with
--backends, of exported models in every runtime beside Ultralytics' own exports.

    python benchmarks/inference.py                                   # all cfgs, CPU, 640, batch 1 and 32
    python benchmarks/inference.py --cfgs cfg/models/yolor-elan-seg.yaml --batch-sizes 1 --runs 3
    python benchmarks/inference.py --device 0 --half                 # GPU, FP16
    python benchmarks/inference.py --backends pytorch onnxruntime openvino openvino-int8 \
        --ref-python ../refvenv/bin/python --ref-data ../ref/coco128-seg.yaml   # deployment table, CPU
    python benchmarks/inference.py --backends ... --shapes static rect   # and the --dynamic exports

Without --backends: the model forward only (fused Conv+BN and RepConv, eval mode, channels_last,
inference_mode), on zeros at the given size: what a deployed network costs before NMS and mask
decoding. Each point is the median of --runs timed runs after --warmup untimed ones.

With --backends: each --models entry (a cfg name, random weights, or a .pt checkpoint) exported
once by export.py (static 640, batch 1; INT8 by NNCF calibrated on --calib-data), then timed, each
backend in a fresh process as a deployment runs it, at
batch 1 on the CPU on --image: end to end per image (read, letterbox, model, NMS, masks in
original pixels: detect.py's path without drawing) and the model call alone; box/mask AP of each
trained model's formats on --ap-data (coco_dev32's 32 images). With --ref-python, Ultralytics'
own ONNX / OpenVINO FP32 / INT8 exports of yolov8n-seg are timed in that venv in the same run
(../shared/bench/ultralytics_export_latency.py, end to end through its predictor). --shapes rect
adds each format exported with --dynamic (rows "-dynamic"), run at the image's own letterbox
shape as our PyTorch path is, beside Ultralytics' exports with dynamic=True
(benchmarks/ultralytics_dynamic_export.py), which its predictor runs the same way.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.deploy import BACKENDS  # noqa: E402
from benchmarks.harness.speed import forward_latency_ms  # noqa: E402
from models.model import build_model  # noqa: E402
from utils.dist import select_device  # noqa: E402


def latency_ms(cfg: str, img_size: int, batch_size: int, device: torch.device, half: bool, warmup: int,
               runs: int) -> float:
    """Median forward time per image in milliseconds (fused, channels_last)."""
    model = build_model(cfg, num_classes=80).fuse()
    return forward_latency_ms(model, batch_size, img_size, device, torch.float16 if half else torch.float32,
                              torch.channels_last, warmup, runs)


SHARED = ROOT.parent / "shared"
DEFAULT_MODELS = ["gp-n-seg", str(SHARED / "official/yolov5n.pt"), "yolor-elan-seg"]


def backend_table(args: argparse.Namespace) -> None:
    """--backends: the deployment table (markdown), then the ratios against Ultralytics. Every
    file is timed in its own fresh process, --rounds times, ours and Ultralytics' interleaved
    (each round times every file once); the table holds the medians over the rounds (shared
    2-core machines swing by half from one minute to the next: one round compares little)."""
    import statistics
    import tempfile

    from benchmarks.harness.deploy import (export_backends, merged_coco_val, reduced, time_backend_isolated,
                                           ultralytics_dynamic_exports, ultralytics_latency,
                                           ultralytics_latency_isolated)

    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="inference_backends_"))
    ap_data = merged_coco_val(Path(args.ap_data), work / "ap") if args.ap_data and Path(args.ap_data).is_dir() else None
    print(f"# CPU, {torch.get_num_threads()} torch threads, batch 1, {args.img_size}, {args.image}; median of "
          f"{args.runs} runs after {args.warmup}, in a fresh process per file, median over {args.rounds} interleaved "
          f"rounds; ms per image; box/mask AP on {args.ap_data or 'no AP set'}")
    ref_shared, ref_dir = {}, work / "ultralytics"
    if args.ref_python:
        try:  # its script exports and times every format in one process (figures kept for the record)
            ref_shared = ultralytics_latency(args.ref_python, Path(args.ref_script), Path(args.image), args.ref_data,
                                             args.runs, ref_dir)
            if "rect" in args.shapes:
                ultralytics_dynamic_exports(args.ref_python, ref_dir, args.ref_data)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print(f"# Ultralytics reference failed: {e}")
    files = []  # (stem, backend, path, trained): backend "-dynamic" for the --dynamic exports
    for entry in args.models:
        src, trained = model_checkpoint(entry, work, args.img_size)
        for shapes in args.shapes:
            backends = tuple(b for b in args.backends if shapes == "static" or b != "pytorch")
            exported = export_backends(src, backends, work / src.stem / shapes, args.img_size, args.calib_data,
                                       args.calib_fraction, dynamic=shapes == "rect")
            files += [(src.stem, name + ("-dynamic" if shapes == "rect" else ""), path, trained)
                      for name, path in exported.items()]
    ours, ref = {}, {}
    for _ in range(args.rounds):
        for stem, name, path, _trained in files:
            ours.setdefault((stem, name), []).append(
                time_backend_isolated(name, path, Path(args.image), args.img_size, args.warmup, args.runs))
        if ref_shared:
            for name, ms in ultralytics_latency_isolated(args.ref_python, ref_dir, Path(args.image), args.runs,
                                                         args.warmup).items():
                ref.setdefault(name, []).append(ms)
    print("| model | backend | input | end to end ms | model ms | detections | box AP | mask AP |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    e2e = {}
    for stem, name, path, trained in files:
        ts = ours[(stem, name)]
        e2e[(stem, name)] = statistics.median(t.e2e_ms for t in ts)
        model_ms = statistics.median(t.model_ms for t in ts)
        box, mask = (ap_cells(path, ap_data, args.img_size, reduced(name.removesuffix("-dynamic")))
                     if trained and ap_data else ("untrained", ""))
        print(f"| {stem} | {name} | {ts[0].input_shape[0]}x{ts[0].input_shape[1]} | {e2e[(stem, name)]:.1f} | "
              f"{model_ms:.1f} | {ts[0].detections} | {box} | {mask} |", flush=True)
    theirs = {name: statistics.median(v) for name, v in ref.items()}
    for name, ms in theirs.items():
        shared = f" ({ref_shared[name]:.1f} in its export script's process)" if name in ref_shared else ""
        print(f"| yolov8n-seg (Ultralytics) | {REF_NAMES.get(name, name)} | its predictor's | {ms:.1f}{shared} | | | "
              f"untrained | |")
    for (stem, name), ms in e2e.items():
        other = theirs.get(REF_OF.get(name, name))
        if stem.startswith("gp-n-seg") and other:
            rounds = [f"{r / o.e2e_ms:.2f}" for r, o in zip(ref[REF_OF.get(name, name)], ours[(stem, name)])]
            print(f"# {stem} {name} vs yolov8n-seg {REF_OF.get(name, name)} (Ultralytics), end to end: {ms:.1f} vs "
                  f"{other:.1f} ms (x{other / ms:.2f}; round by round x{', x'.join(rounds)})")


REF_NAMES = {"onnx": "onnxruntime", "onnx-dynamic": "onnxruntime-dynamic"}  # its row names that differ from ours
# our backend -> the reference row it is compared with (its OpenVINO rows run at the CPU's own
# precision: OpenVINO's default, bf16 where the CPU has it); -dynamic: both exported with dynamic shapes
REF_OF = {"onnxruntime": "onnx", "openvino-bf16": "openvino", "openvino-int8-bf16": "openvino-int8",
          "onnxruntime-dynamic": "onnx-dynamic", "openvino-bf16-dynamic": "openvino-dynamic",
          "openvino-int8-bf16-dynamic": "openvino-int8-dynamic"}


def model_checkpoint(entry: str, work: Path, img_size: int) -> tuple[Path, bool]:
    """(a .pt to export, whether it is trained): a checkpoint path as given, or a cfg name built
    with seeded random weights and saved (latency does not depend on the weights)."""
    from utils.io import save_checkpoint

    if entry.endswith(".pt"):
        return Path(entry), True
    model = build_model(entry, num_classes=80)
    names = [str(i) for i in range(80)]
    ckpt = {"model": model.state_dict(), "ema": None,
            "config": {"model": model.yaml, "nc": 80, "names": names, "img_size": img_size}}
    return save_checkpoint(ckpt, work / Path(entry).stem / f"{Path(entry).stem}.pt"), False


def ap_cells(path: Path, data: Path, img_size: int, half: bool) -> tuple[str, str]:
    from benchmarks.harness.deploy import box_mask_ap

    box, mask = box_mask_ap(path, data, img_size, half)
    return f"{box:.4f}", "" if mask is None else f"{mask:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfgs", nargs="+", default=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cfg/models").glob("*.yaml")))
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    ap.add_argument("--half", action="store_true", help="FP16 (CUDA only)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                    help="the deployment table: exported models in these runtimes (CPU, batch 1)")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="--backends: cfg names or .pt checkpoints")
    ap.add_argument("--image", default=str(SHARED / "data/images/bus.jpg"), help="--backends: the timed image")
    ap.add_argument("--ap-data", default=str(SHARED / "data/dev/coco_dev32"),
                    help="--backends: a COCO folder (images/, annotations/instances_*.json) scored as one set")
    ap.add_argument("--calib-data", default=str(SHARED / "data/dev/coco128_instances/coco128-seg.yaml"),
                    help="--backends: INT8 calibration set (its train split; not the AP set)")
    ap.add_argument("--calib-fraction", type=float, default=0.5)
    ap.add_argument("--ref-python", default=None, help="--backends: Python of the reference venv (Ultralytics)")
    ap.add_argument("--ref-script", default=str(SHARED / "bench/ultralytics_export_latency.py"))
    ap.add_argument("--ref-data", default=None, help="--backends: the reference's INT8 calibration YAML "
                    "(Ultralytics' format, absolute path), e.g. coco8-seg.yaml")
    ap.add_argument("--shapes", nargs="+", choices=("static", "rect"), default=["static"],
                    help="--backends: static 640x640 exports (Ultralytics' default), and/or rect: exported "
                         "with --dynamic (theirs dynamic=True), each image at its own letterbox shape")
    ap.add_argument("--rounds", type=int, default=3, help="--backends: interleaved timing rounds (median taken)")
    ap.add_argument("--work", default=None, help="--backends: folder for the exports (default: a temporary one)")
    args = ap.parse_args()
    device = select_device(args.device)
    if args.half and device.type != "cuda":
        ap.error("--half needs a CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backends:
        if device.type != "cpu" or args.half:
            ap.error("--backends: the deployment table is measured on the CPU (--device cpu, no --half)")
        if args.ref_python and not args.ref_data:
            ap.error("--ref-python needs --ref-data (the reference's INT8 calibration YAML)")
        backend_table(args)
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {where}, {'FP16' if args.half else 'FP32'}, {args.img_size}x{args.img_size}, fused, "
          f"median of {args.runs} runs, ms per image")
    cols = [f"batch {b}" for b in args.batch_sizes]
    print(f"| cfg | GFLOPs | params | {' | '.join(cols)} |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    for cfg in args.cfgs:
        info = build_model(cfg, num_classes=80).info(args.img_size)
        cells = [f"{latency_ms(cfg, args.img_size, b, device, args.half, args.warmup, args.runs):.1f}"
                 for b in args.batch_sizes]
        print(f"| {Path(cfg).stem} | {info['gflops']:.1f} | {info['params'] / 1e6:.1f}M | {' | '.join(cells)} |",
              flush=True)


if __name__ == "__main__":
    main()
