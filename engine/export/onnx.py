"""The one ONNX writer: a model (raw head outputs) or its end-to-end wrapper traced with torch.onnx
(dynamo=False), optionally simplified with onnxslim, its ModelMeta in metadata_props. Every
ONNX-based format (the .onnx file, OpenVINO IR, TensorRT engines) starts from these bytes."""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from engine.checkpoint import ModelMeta
from engine.export.end2end import OUTPUTS, End2End

RAW_OUTPUTS = ("predictions", "protos")


def output_names(module: nn.Module, segment: bool) -> list[str]:
    if isinstance(module, End2End):
        return list(OUTPUTS if segment else OUTPUTS[:4])
    return list(RAW_OUTPUTS if segment else RAW_OUTPUTS[:1])


def dynamic_axes(names: list[str], batch: bool, size: bool) -> dict[str, dict[int, str]] | None:
    """Batch (and input size) axes; the outputs follow (boxes per image stay fixed at K)."""
    if not (batch or size):
        return None
    axes = {"images": {**({0: "batch"} if batch else {}), **({2: "height", 3: "width"} if size else {})}}
    for n in names:
        axes[n] = {0: "batch"} if batch else {}
        if size and n == "predictions":
            axes[n][1] = "anchors"
        if size and n in ("protos", "masks"):
            axes[n].update({2: "mask_h", 3: "mask_w"})
    return axes


def onnx_bytes(module: nn.Module, x: torch.Tensor, meta: ModelMeta, batch_dynamic: bool, size_dynamic: bool,
               opset: int = 17, simplify: bool = False) -> bytes:
    """module(x) traced to ONNX, with `meta` inside. x: (B,3,H,W) example input on the module's device."""
    import onnx

    names = output_names(module, meta.task == "segment")
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings concern shapes dynamic_axes already frees
        torch.onnx.export(module, x, buf, input_names=["images"], output_names=names, opset_version=opset,
                          dynamic_axes=dynamic_axes(names, batch_dynamic, size_dynamic), dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    return with_metadata(model, meta.to_strings()).SerializeToString()


def with_metadata(model, values: dict[str, str]):
    """The onnx.ModelProto with `values` (ModelMeta.to_strings) as its only metadata."""
    del model.metadata_props[:]
    for k, v in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model
