"""export.py's engine: one checkpoint to every format asked for (ONNX raw or end-to-end,
OpenVINO FP32/FP16/INT8, TorchScript, TensorRT), each checked against PyTorch on a real image
before it is kept."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.checkpoint import BakedNms, ModelMeta, load_model
from engine.device import torch_threads_kept
from engine.export.checks import CheckFailed, check_input, compare_detections, max_abs_diff
from engine.export.end2end import End2End
from engine.export.files import staged_file, writable_dir
from engine.export.onnx import onnx_bytes
from engine.export.options import ExportOptions, validate
from utils.cli_args import round_to_stride
from utils.postprocess import end2end_postprocess, postprocess

LOG = logging.getLogger("gradpath.export")
ROOT = Path(__file__).resolve().parents[2]
BUNDLED_DATA = ROOT / "cfg" / "data" / "coco-mini.yaml"
# largest raw difference relative to max(1, the output's largest magnitude), and the end-to-end
# detection agreement (box IoU, score difference, mask IoU, share of unmatched detections), per precision
# (INT8 raw outputs are compared as detections at detect.py's default thresholds instead). INT8
# catches a broken quantization, not its cost (the AP check with --data measures that): masks are
# reported, not gated (one box edge moved can halve a small mask's IoU), and a confidence may
# move by a tenth or more
RAW_TOL = {"fp32": 1e-4, "fp16": 2e-2}
E2E_TOL = {"fp32": (0.99, 1e-3, 0.98, 0.0), "fp16": (0.9, 3e-2, 0.85, 0.2), "int8": (0.5, 0.25, 0.0, 0.25)}


@dataclass
class Exported:
    format: str
    path: Path
    check: str  # the comparison with PyTorch, one line
    precision: str = "fp32"
    ap: str = ""  # INT8 with --data: the AP against PyTorch on its val split, one line


@dataclass
class Job:
    """What every format's writer and check share for one export run."""

    opt: ExportOptions
    model: nn.Module
    module: nn.Module  # model, or End2End(model)
    meta: ModelMeta
    device: torch.device
    head_index: int
    x: torch.Tensor  # the check input (B,3,S,S)
    orig_shape: tuple[int, int]
    ratio_pad: tuple
    stem: Path
    onnx_cache: dict[bool, bytes] = field(default_factory=dict)


def export(opt: ExportOptions) -> list[Exported]:
    """Every format of opt.include, in that order, each checked before it is kept; raises
    ExportError (one line) on a bad option before anything is loaded or written."""
    device = validate(opt)
    stem = Path(opt.out).with_suffix("") if opt.out else Path(opt.weights).with_suffix("")
    writable_dir(stem.parent)
    job = prepare(opt, device, stem)
    done = []
    with torch_threads_kept():  # the checks' runtimes leave torch on one thread; the caller gets its own back
        for fmt in dict.fromkeys(opt.include):
            done += WRITERS[fmt](job)
    return done


def prepare(opt: ExportOptions, device: torch.device, stem: Path) -> Job:
    model, ckpt = load_model(opt.weights, device, fuse=True)
    meta = ModelMeta.of(ckpt, model)
    size = round_to_stride(opt.img_size, meta.stride) if opt.img_size else meta.img_size
    meta = replace(meta, img_size=size)
    module: nn.Module = model
    if opt.nms:
        module = End2End(model, model.nc, model.nm, opt.conf_thres, opt.iou_thres, opt.topk_all, opt.multi_label)
        meta = replace(meta, nms=BakedNms(opt.conf_thres, opt.iou_thres, opt.topk_all, opt.multi_label))
    batch = 2 if (opt.dynamic or opt.nms) else opt.batch_size  # two images prove the batch axis is free
    x, orig, rp = check_input(size, batch)
    return Job(opt, model, module, meta, device, len(model.layers) - 1, x.to(device), orig, rp, stem)


def onnx_data(job: Job, half: bool = False) -> bytes:
    """The ONNX graph (FP32, or FP16 for CUDA backends), traced once per precision."""
    if half not in job.onnx_cache:
        module, x = job.module, job.x[:1] if (job.opt.dynamic or job.opt.nms) else job.x
        if half:
            import copy

            module, x = copy.deepcopy(module).half(), x.half()
        job.onnx_cache[half] = onnx_bytes(module, x, job.meta, job.opt.dynamic or job.opt.nms, job.opt.dynamic,
                                          job.opt.opset, job.opt.simplify)
    return job.onnx_cache[half]


def checker(job: Job, precision: str, what: str):
    """check(path) -> one-line report, or ExportError: the file through its inference backend on
    the check image against the PyTorch model."""
    from engine.infer.backends import load_backend

    with torch.no_grad():
        pred, proto = job.model(job.x)

    def check(path: Path) -> str:
        backend = load_backend(path, job.device)
        out = backend(job.x)
        if job.meta.end2end or precision == "int8":
            report, ok = _check_detections(job, out, pred, proto, precision)
        else:
            ref = [pred] + ([proto] if proto is not None else [])
            got = [out.pred] + ([out.proto] if out.proto is not None else [])
            diff = max_abs_diff([g.cpu().numpy() for g in got], ref)
            rel = diff / max(1.0, max(float(r.abs().max()) for r in ref))
            report, ok = f"max abs diff {diff:.2e} vs PyTorch (relative {rel:.1e})", rel <= RAW_TOL[precision]
        if not ok:
            raise CheckFailed(f"{what}: the check against PyTorch failed on {job.x.shape[0]} images: {report}; "
                              f"nothing was written")
        return report

    return check


def _check_detections(job: Job, out, pred, proto, precision: str) -> tuple[str, bool]:
    """The export's detections against PyTorch's on each check image: at the thresholds baked into
    an end-to-end graph, else (INT8 raw outputs) at detect.py's defaults."""
    shape = tuple(job.x.shape[-2:])
    n = job.x.shape[0]
    nms = job.meta.nms or BakedNms(0.25, 0.45, 300)
    conf, iou, k = nms.conf_thres, nms.iou_thres, nms.topk
    orig, rps = [job.orig_shape] * n, [job.ratio_pad] * n
    ref = postprocess(pred, proto, shape, orig, rps, conf, iou, k, multi_label=nms.multi_label)
    got = (end2end_postprocess(out, shape, orig, rps) if job.meta.end2end else
           postprocess(out.pred, out.proto, shape, orig, rps, conf, iou, k, multi_label=nms.multi_label))
    box, score, mask, unmatched = E2E_TOL[precision]
    floors = [float(r.scores.min()) + max(score, 1e-3) if len(r) == k else -1.0 for r in ref]  # the top-k cut
    diffs = [compare_detections(r, g, f) for r, g, f in zip(ref, got, floors)]
    worst = min(diffs, key=lambda d: (d.unmatched == 0, d.min_box_iou, d.min_mask_iou))
    ok = all(d.unmatched <= unmatched * max(d.n_ref, 4) and d.min_box_iou >= box and d.max_score_diff <= score
             and d.min_mask_iou >= mask for d in diffs)
    return worst.largest, ok


def write_onnx(job: Job) -> list[Exported]:
    from engine.infer.backends import OnnxBackend

    half = job.opt.half
    dest = job.stem.with_suffix(".onnx")
    check = checker(job, "fp16" if half else "fp32", "--include onnx")
    with staged_file(dest) as tmp:
        tmp.write_bytes(onnx_data(job, half))
        OnnxBackend(tmp, job.device)  # readable before the check
        report = check(tmp)
    return [Exported("onnx", dest, report, "fp16" if half else "fp32")]


def write_openvino_all(job: Job) -> list[Exported]:
    from engine.export.openvino import write_openvino

    out = []
    name = job.stem.name
    precision = "fp16" if job.opt.half else "fp32"
    dest = job.stem.with_name(f"{name}_openvino_model")
    report = write_openvino(onnx_data(job), job.meta, dest, job.opt.half, checker(job, precision, "--include openvino"))
    out.append(Exported("openvino", dest, report, precision))
    if job.opt.int8:
        images = calibration_images(job)
        dest = job.stem.with_name(f"{name}_int8_openvino_model")
        report = write_openvino(onnx_data(job), job.meta, dest, False, checker(job, "int8", "--include openvino --int8"),
                                (images, len(images), job.head_index))
        out.append(Exported("openvino", dest, report, "int8", int8_ap_line(job, dest)))
    return out


def write_torchscript_file(job: Job) -> list[Exported]:
    """FP32 raw outputs whatever --half and --nms say (those apply to the ONNX-based formats)."""
    from engine.export.torchscript import write_torchscript

    if job.opt.nms or job.opt.half:
        LOG.warning("--include torchscript: written in FP32 with raw outputs (--nms and --half apply to "
                    "ONNX, OpenVINO and TensorRT)")
    dest = job.stem.with_suffix(".torchscript")
    raw = replace(job.meta, nms=None)
    check = checker(replace(job, meta=raw), "fp32", "--include torchscript")
    return [Exported("torchscript", dest, write_torchscript(job.model, job.x, raw, dest, check))]


def write_engine_file(job: Job) -> list[Exported]:
    from engine.export.tensorrt import write_engine

    b, _, h, w = job.x.shape
    size = job.meta.img_size
    if job.opt.dynamic:
        shapes = {"min": (1, 3, 32, 32), "opt": (1, 3, size, size), "max": (max(b, job.opt.batch_size, 8), 3, 2 * size, 2 * size)}
    elif job.opt.nms:
        shapes = {"min": (1, 3, h, w), "opt": (1, 3, h, w), "max": (max(b, job.opt.batch_size, 8), 3, h, w)}
    else:
        shapes = {k: tuple(job.x.shape) for k in ("min", "opt", "max")}
    precision = "int8" if job.opt.int8 else "fp16" if job.opt.half else "fp32"
    calib = calibration_images(job) if job.opt.int8 else None
    dest = job.stem.with_suffix(".engine")
    report = write_engine(onnx_data(job), job.meta, dest, job.device, job.opt.half, calib, shapes,
                          checker(job, precision, "--include engine"), job.opt.workspace)
    return [Exported("engine", dest, report, precision, int8_ap_line(job, dest) if job.opt.int8 else "")]


def int8_ap_line(job: Job, path: Path) -> str:
    """The INT8 model's AP against PyTorch on --data's val split, or '' without one."""
    from engine.export.quant_ap import int8_ap

    if not (job.opt.data and job.opt.int8_ap):
        return ""
    drop = int8_ap(job.model, job.meta, path, job.opt.data, job.device)
    if drop is None:
        LOG.info("INT8: %s has no val split with the model's %d classes; no AP check", job.opt.data, len(job.meta.names))
        return ""
    return drop.line(job.opt.data, job.meta.img_size)


def calibration_images(job: Job) -> list[np.ndarray]:
    """(1,3,S,S) float32 0-1 letterboxed images of the calibration set's train split, the first
    --fraction of them."""
    from data.config import load_data_config
    from data.loader import build_dataloader

    cfg = load_data_config(job.opt.data or BUNDLED_DATA)
    split = "train" if "train" in cfg.splits else "val"
    loader, dataset = build_dataloader(cfg, split, job.meta.img_size, 1, workers=0, stride=job.meta.stride,
                                       pin_memory=False)
    n = max(1, round(job.opt.fraction * len(dataset)))
    images = []
    for batch in loader:
        if len(images) >= n:
            break
        images.append((batch.images.float() / 255.0).numpy())
    LOG.info("INT8 calibration: %d images of %s (%s split)", len(images), job.opt.data or BUNDLED_DATA, split)
    return images


WRITERS = {"onnx": write_onnx, "openvino": write_openvino_all, "torchscript": write_torchscript_file,
           "engine": write_engine_file}
