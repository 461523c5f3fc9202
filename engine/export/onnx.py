"""ONNX export, checked against PyTorch with onnxruntime, written atomically."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import ModelMeta, load_model
from utils.dist import select_device
from utils.cli_args import round_to_stride
from utils.io import atomic_write_bytes

LOG = logging.getLogger("gradpath.export")


def export_onnx(weights: str | Path, img_size: int | None = None, dynamic: bool = False, half: bool = False,
                opset: int = 17, out: str | Path | None = None, device: str = "cpu") -> tuple[Path, float]:
    """Write `weights` as ONNX (inputs "images"; outputs "predictions", "protos"); return (path, max abs diff)."""
    dev = select_device(device, several=True)
    if half and dev.type != "cuda":
        raise ValueError("--half export needs a CUDA device (--device 0)")
    model, ckpt = load_model(weights, dev, fuse=True)
    meta = ModelMeta.of(ckpt, model)
    size = round_to_stride(img_size, meta.stride) if img_size else meta.img_size
    x = torch.rand(1, 3, size, size, device=dev)
    if half:
        model, x = model.half(), x.half()
    names = ["predictions"] + (["protos"] if model.nm else [])
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "predictions": {0: "batch", 1: "anchors"},
            "protos": {0: "batch", 2: "proto_h", 3: "proto_w"}} if dynamic else None
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, x, buf, input_names=["images"], output_names=names, opset_version=opset,
                          dynamic_axes={k: v for k, v in (axes or {}).items() if k == "images" or k in names} or None,
                          dynamo=False)
    out = Path(out) if out else Path(weights).with_suffix(".onnx")
    data = with_metadata(buf.getvalue(), {**meta.to_strings(), "img_size": str(size)})
    diff = check_onnx(data, model, x)
    atomic_write_bytes(out, lambda f: f.write(data))  # once, checked, metadata inside
    return out, diff


def check_onnx(onnx_bytes: bytes, model: torch.nn.Module, x: torch.Tensor) -> float:
    """Max abs difference between onnxruntime and PyTorch outputs on x."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = [t for t in model(x) if t is not None]
    got = sess.run(None, {"images": x.float().cpu().numpy() if x.dtype == torch.float32 else x.cpu().numpy()})
    return float(max(np.abs(g.astype(np.float32) - r.float().cpu().numpy()).max() for g, r in zip(got, ref)))


def with_metadata(onnx_bytes: bytes, values: dict[str, str]) -> bytes:
    """The model with `values` (ModelMeta: names, category ids, size, stride, task) in its metadata."""
    import onnx

    m = onnx.load_from_string(onnx_bytes)
    for k, v in values.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    return m.SerializeToString()
