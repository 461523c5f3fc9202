"""Box conversions and the mapping between input (letterboxed) and original image pixels."""
from __future__ import annotations

import torch
from torch import Tensor

RatioPad = tuple[tuple[float, float], tuple[float, float]]


def xyxy_to_xywh_coco(boxes: Tensor) -> Tensor:
    """(N,4) xyxy -> COCO [x, y, w, h]."""
    out = boxes.clone()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def input_to_orig(boxes: Tensor, ratio_pad: RatioPad, orig_shape: tuple[int, int]) -> Tensor:
    """Undo letterbox: orig = (input - pad) / scale, then clip to the original image."""
    (sx, sy), (px, py) = ratio_pad
    out = (boxes - boxes.new_tensor([px, py, px, py])) / boxes.new_tensor([sx, sy, sx, sy])
    h, w = orig_shape
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N,4) x (M,4) xyxy -> (N,M) IoU."""
    area_a = (a[:, 2] - a[:, 0]).clamp(0) * (a[:, 3] - a[:, 1]).clamp(0)
    area_b = (b[:, 2] - b[:, 0]).clamp(0) * (b[:, 3] - b[:, 1]).clamp(0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)
