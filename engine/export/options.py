"""export.py's options and their check at entry: every bad value is one ExportError line naming
the flag, raised before a model is loaded or a file written."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.export.checks import ExportError
from engine.export.formats import FORMATS
MIN_OPSET = 11  # TopK with a tensor k and NonMaxSuppression's inputs as the end-to-end graph uses them
MAX_OPSET = 20  # the newest torch.onnx's TorchScript exporter (dynamo=False) writes


@dataclass
class ExportOptions:
    weights: str
    include: tuple[str, ...] = ("onnx",)
    img_size: int | None = None
    batch_size: int = 1
    dynamic: bool = False  # dynamic batch and input size (end-to-end graphs always have dynamic batch)
    half: bool = False
    int8: bool = False
    data: str | None = None  # INT8 calibration images (the train split); default: the bundled set
    fraction: float = 1.0  # share of that split used to calibrate
    int8_ap: bool = True  # INT8: score it against PyTorch on --data's val split when it has one
    nms: bool = False
    topk_all: int = 100
    iou_thres: float = 0.45
    conf_thres: float = 0.25
    multi_label: bool = False
    simplify: bool = False
    opset: int = 17
    device: str = "cpu"
    workspace: float = 4.0  # TensorRT builder memory, GB
    out: str | None = None  # the ONNX path; other formats take its folder and stem


def validate(opt: ExportOptions) -> torch.device:
    """The device to export on, or ExportError naming the first bad flag."""
    from utils.dist import select_device

    bad = [f for f in opt.include if f not in FORMATS]
    if bad or not opt.include:
        raise ExportError(f"--include {' '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
    weights = Path(opt.weights)
    if not weights.is_file():
        raise ExportError(f"--weights {weights}: no such file")
    if opt.img_size is not None and opt.img_size < 1:
        raise ExportError(f"--img-size {opt.img_size}: must be at least 1 (rounded up to the model's stride)")
    if opt.batch_size < 1:
        raise ExportError(f"--batch-size {opt.batch_size}: must be at least 1")
    if not 0.0 <= opt.conf_thres < 1.0:
        raise ExportError(f"--conf-thres {opt.conf_thres}: must be in [0, 1)")
    if not 0.0 < opt.iou_thres <= 1.0:
        raise ExportError(f"--iou-thres {opt.iou_thres}: must be in (0, 1]")
    if opt.topk_all < 1:
        raise ExportError(f"--topk-all {opt.topk_all}: must be at least 1")
    if not 0.0 < opt.fraction <= 1.0:
        raise ExportError(f"--fraction {opt.fraction}: must be in (0, 1]")
    if opt.workspace <= 0:
        raise ExportError(f"--workspace {opt.workspace}: must be a positive number of GB")
    if not MIN_OPSET <= opt.opset <= MAX_OPSET:
        raise ExportError(f"--opset {opt.opset}: must be {MIN_OPSET} to {MAX_OPSET}")
    if opt.int8 and not {"openvino", "engine"} & set(opt.include):
        raise ExportError("--int8: quantizes --include openvino or engine; add one of them")
    if opt.int8 and opt.half:
        raise ExportError("--int8 and --half: choose one (INT8 keeps its float parts in FP32 on OpenVINO, FP16 on TensorRT)")
    if opt.data is not None and not Path(opt.data).is_file():
        raise ExportError(f"--data {opt.data}: no such file")
    if opt.out is not None and Path(opt.out).is_dir():
        raise ExportError(f"--out {opt.out}: is a folder; give the .onnx path (other formats go beside it)")
    try:
        device = select_device(opt.device, several=True)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if opt.half and device.type != "cuda" and {"onnx", "engine"} & set(opt.include):
        raise ExportError("--half: FP16 ONNX and TensorRT exports need a CUDA device (--device 0); "
                          "OpenVINO FP16 (--include openvino) runs here")
    if "engine" in opt.include:
        from engine.export.tensorrt import require_tensorrt

        require_tensorrt(device)
    return device
