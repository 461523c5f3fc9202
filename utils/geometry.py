"""Box geometry, one implementation for the losses, the assigners, inference and evaluation: IoU /
CIoU, xyxy <-> xywh, ltrb distances, feature-map grids and anchor points, box crops, and the
mapping between input (letterboxed) and original image pixels."""
from __future__ import annotations

import math

import torch
from torch import Tensor

RatioPad = tuple[tuple[float, float], tuple[float, float]]

EPS = 1e-7


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """boxes: (...,4) centre x, centre y, w, h -> (...,4) x1, y1, x2, y2."""
    xy, wh = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """boxes: (...,4) x1, y1, x2, y2 -> (...,4) centre x, centre y, w, h."""
    return torch.cat(((boxes[..., :2] + boxes[..., 2:4]) / 2, boxes[..., 2:4] - boxes[..., :2]), -1)


def bbox_iou(a: Tensor, b: Tensor, ciou: bool = False) -> Tensor:
    """a, b: (...,4) xyxy, broadcastable -> (...) IoU, or Complete-IoU (Zheng et al. 2020) if ciou."""
    w1, h1 = (a[..., 2] - a[..., 0]).clamp(min=0), (a[..., 3] - a[..., 1]).clamp(min=0)
    w2, h2 = (b[..., 2] - b[..., 0]).clamp(min=0), (b[..., 3] - b[..., 1]).clamp(min=0)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (w1 * h1 + w2 * h2 - inter + EPS)
    if not ciou:
        return iou
    # Enclosing box diagonal, centre distance and aspect-ratio consistency terms.
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    diag2 = cw**2 + ch**2 + EPS
    dx = (b[..., 0] + b[..., 2] - a[..., 0] - a[..., 2]) / 2
    dy = (b[..., 1] + b[..., 3] - a[..., 1] - a[..., 3]) / 2
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + EPS)) - torch.atan(w1 / (h1 + EPS))) ** 2
    with torch.no_grad():  # the trade-off weight is a constant in the CIoU paper's gradient
        alpha = v / (v - iou + (1 + EPS))
    return iou - ((dx**2 + dy**2) / diag2 + alpha * v)


def dist_to_bbox(points: Tensor, ltrb: Tensor) -> Tensor:
    """points: (...,2) xy, ltrb: (...,4) distances -> (...,4) xyxy (same units)."""
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), -1)


def bbox_to_dist(points: Tensor, boxes: Tensor) -> Tensor:
    """points: (...,2) xy, boxes: (...,4) xyxy -> (...,4) ltrb distances (same units)."""
    return torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), -1)


def cell_grid(h: int, w: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(h*w, 2) xy cell indices of an h x w feature map, row by row."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack((xs, ys), -1).view(-1, 2)


def anchor_points(shapes: list[tuple[int, int]], strides: Tensor) -> tuple[Tensor, Tensor]:
    """Cell centres of every level, row-major per level: -> points (A,2) xy pixels, strides (A,1)."""
    points, steps = [], []
    dev = strides.device  # made there: no host-to-device copy in every loss call
    for (h, w), s in zip(shapes, strides.tolist()):
        points.append((cell_grid(h, w, dev) + 0.5) * s)
        steps.append(torch.full((h * w, 1), float(s), device=dev))
    return torch.cat(points), torch.cat(steps)


def box_mask(boxes: Tensor, h: int, w: int, centre: float = 0.5) -> Tensor:
    """boxes: (N,4) xyxy in the pixels of an h x w map -> (N,h,w) bool, True at the pixels whose
    centre lies in [x1, x2) x [y1, y2), pixel i's centre being at i + centre.

    0.5 (pixel i covers [i, i+1)) is right for maps resampled with align_corners=False, as the mask
    decode's are. The mask loss passes 0.0, the crop by pixel index of the YOLOv5 and Ultralytics
    losses: their mask-loss figures (the loss parity tests) need it (0.5 moves lseg by 4.5e-4 relative)."""
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype)[None, :, None] + centre
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype)[None, None, :] + centre
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N,4) x (M,4) xyxy -> (N,M) pairwise IoU."""
    return bbox_iou(a[:, None], b[None])


def xyxy_to_xywh_coco(boxes: Tensor) -> Tensor:
    """(N,4) xyxy -> COCO [x, y, w, h] (top-left corner, width, height)."""
    out = boxes.clone()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def orig_to_input(boxes: Tensor, ratio_pad: RatioPad) -> Tensor:
    """Letterbox boxes as the image was: input = orig * scale + pad (input_to_orig's inverse)."""
    (sx, sy), (px, py) = ratio_pad
    return boxes * boxes.new_tensor([sx, sy, sx, sy]) + boxes.new_tensor([px, py, px, py])


def input_to_orig(boxes: Tensor, ratio_pad: RatioPad, orig_shape: tuple[int, int]) -> Tensor:
    """Undo letterbox: orig = (input - pad) / scale, then clip to the original image."""
    (sx, sy), (px, py) = ratio_pad
    out = (boxes - boxes.new_tensor([px, py, px, py])) / boxes.new_tensor([sx, sy, sx, sy])
    h, w = orig_shape
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out
