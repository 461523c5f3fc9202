"""The AP an INT8 export gives against its PyTorch checkpoint on the calibration dataset's val
split, printed by export.py itself: quantization costs accuracy, and the user sees how much."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.checkpoint import BakedNms, ModelMeta
from engine.device import torch_threads_kept

VAL_SETTINGS = BakedNms(0.001, 0.65, 300, True)  # val.py's defaults: conf, NMS IoU, max det, per class


@dataclass
class ApDrop:
    images: int
    box: tuple[float, float]  # (FP32, INT8) AP50-95
    mask: tuple[float, float] | None

    def line(self, data: str, size: int) -> str:
        parts = [f"box AP {self.box[1]:.4f} vs {self.box[0]:.4f} ({self.box[1] - self.box[0]:+.4f})"]
        if self.mask:
            parts.append(f"mask AP {self.mask[1]:.4f} vs {self.mask[0]:.4f} ({self.mask[1] - self.mask[0]:+.4f})")
        return f"INT8 vs PyTorch FP32 on {data} val ({self.images} images, {size}): {'; '.join(parts)}"


def int8_ap(model: nn.Module, meta: ModelMeta, int8_path: Path, data: str, device: torch.device,
            batch_size: int = 32) -> ApDrop | None:
    """Both models through the evaluator on one loader (val.py's batch and rectangular batches;
    square ones for a static export), at the end-to-end graph's baked settings or else val.py's
    defaults; None when `data` has no val
    split or other classes than the model."""
    from data.config import load_data_config
    from data.loader import build_dataloader
    from engine.eval.evaluator import evaluate
    from engine.infer.backends import load_backend

    cfg = load_data_config(data)
    if "val" not in cfg.splits or cfg.nc != len(meta.names):
        return None
    s = meta.nms or VAL_SETTINGS

    def score(m):
        return evaluate(m, loader, dataset, device, s.conf_thres, s.iou_thres, s.topk, multi_label=s.multi_label)

    with torch_threads_kept():  # the INT8 file beside its runtime, torch on one thread meanwhile
        backend = load_backend(int8_path, device)
        loader, dataset = build_dataloader(cfg, "val", meta.img_size, batch_size, rect=backend.fixed is None,
                                           workers=0, stride=meta.stride, pin_memory=False)
        int8 = score(backend)
    fp32 = score(model)  # the FP32 model is torch's own: all of its threads
    mask = (fp32.mask["AP"], int8.mask["AP"]) if fp32.mask else None
    return ApDrop(fp32.n_images, (fp32.box["AP"], int8.box["AP"]), mask)
