"""TensorRT engine from the checked ONNX graph (FP32, FP16, or INT8 calibrated on a dataset's
images with FP16 where INT8 is not taken), built on
the GPU it will run on; our .engine file is TRT_MAGIC, a uint32 length, the metadata JSON, then
the serialized engine (engine.infer.backends.read_trt_file reads it)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.checkpoint import ModelMeta
from engine.export.checks import ExportError
from engine.export.files import staged_file
from engine.infer.backends import TRT_MAGIC


def require_tensorrt(device: torch.device):
    """The tensorrt module, or one line saying why an engine cannot be built here."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ExportError("--include engine: TensorRT builds engines on an NVIDIA GPU only"
                          + (" (pass --device 0)" if torch.cuda.is_available() else "; this machine has no CUDA device"))
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError("--include engine: TensorRT is not installed (pip install tensorrt)") from None
    return trt


def calibrator(trt, images: list[np.ndarray], device: torch.device):
    """TensorRT's entropy calibrator over (1,3,H,W) float32 images, fed from torch CUDA tensors."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.pending, self.current = iter(images), None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            x = next(self.pending, None)
            if x is None:
                return None
            self.current = torch.from_numpy(x).to(device).contiguous()  # kept alive until the next call
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return Calibrator()


def build_engine(onnx_data: bytes, device: torch.device, half: bool, calibration: list[np.ndarray] | None,
                 shapes: dict[str, tuple], workspace_gb: float = 4.0) -> bytes:
    """shapes: {"min"|"opt"|"max": (B,3,H,W)} of the input's optimisation profile; calibration:
    images for INT8 (None: FP16 with `half`, else FP32)."""
    trt = require_tensorrt(device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"--include engine: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if half or calibration:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if calibration:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator(trt, calibration, device)
        config.set_calibration_profile(profile)
    with torch.cuda.device(device):
        blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError("--include engine: TensorRT failed to build the engine (see its log above)")
    return bytes(blob)


def write_engine(onnx_data: bytes, meta: ModelMeta, dest: Path, device: torch.device, half: bool,
                 calibration: list[np.ndarray] | None, shapes: dict[str, tuple], check: Callable[[Path], str],
                 workspace_gb: float = 4.0) -> str:
    blob = build_engine(onnx_data, device, half, calibration, shapes, workspace_gb)
    header = json.dumps(meta.to_strings()).encode()
    with staged_file(dest) as tmp:
        tmp.write_bytes(TRT_MAGIC + len(header).to_bytes(4, "little") + header + blob)
        return check(tmp)
