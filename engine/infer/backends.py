"""Inference backends behind one call: backend(images (B,3,H,W) float 0-1) -> (predictions, protos),
with names, category_ids, stride and default_size from the file. PyTorch checkpoints and ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import ModelMeta
from engine.device import compile_model, memory_format
from engine.infer.sources import SourceError


class OnnxBackend:
    """An exported .onnx file through onnxruntime (CUDA provider on a GPU)."""

    def __init__(self, path: str | Path, device: torch.device):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise SourceError(f"--weights {path}: ONNX file not found")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.meta = ModelMeta.from_strings(self.session.get_modelmeta().custom_metadata_map)
        self.device = device
        shape = self.session.get_inputs()[0].shape
        self.fixed = None if isinstance(shape[2], str) else (int(shape[2]), int(shape[3]))
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.half = self.session.get_inputs()[0].type == "tensor(float16)"

    def __call__(self, images: torch.Tensor):
        x = images.cpu().numpy().astype(np.float16 if self.half else np.float32)
        if self.fixed and tuple(x.shape[2:]) != self.fixed:
            raise ValueError(f"this ONNX model takes {self.fixed[0]}x{self.fixed[1]} inputs; "
                             f"use --img-size {self.fixed[0]} or export with --dynamic")
        outs = [torch.from_numpy(o.astype(np.float32)).to(self.device) for o in self._run(x)]
        return outs[0], (outs[1] if len(outs) > 1 else None)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """One session run, or several when the model was exported with a fixed batch size that
        differs from this batch (the last chunk zero-padded, its padding dropped)."""
        b = self.fixed_batch
        if not b or x.shape[0] == b:
            return self.session.run(None, {"images": x})
        parts: list[list[np.ndarray]] = []
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([o[:n] for o in self.session.run(None, {"images": chunk})])
        return [np.concatenate(outs) for outs in zip(*parts)]


class TorchBackend:
    """A gradpath or official .pt checkpoint, fused, in eval mode."""

    def __init__(self, weights: str, device: torch.device, half: bool, compile: bool = False):
        from engine.checkpoint import load_model

        self.model, ckpt = load_model(weights, device, fuse=True)
        self.memory_format = memory_format(device, "inference")
        self.model.to(memory_format=self.memory_format)
        self.half = half and device.type == "cuda"
        if self.half:
            self.model.half()
        compile_model(self.model, compile)
        self.meta, self.device = ModelMeta.of(ckpt, self.model), device

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor):
        images = images.contiguous(memory_format=self.memory_format)
        pred, proto = self.model(images.half() if self.half else images)
        return pred.float(), None if proto is None else proto.float()


def load_backend(weights: str, device: torch.device, half: bool, compile: bool = False):
    """The backend for a --weights path; every one has `meta` (ModelMeta) and is called on images."""
    if str(weights).endswith(".onnx"):
        return OnnxBackend(weights, device)
    return TorchBackend(weights, device, half, compile)
