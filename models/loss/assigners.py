"""Which predictions learn which target: shape-ratio anchor matching (YOLOR / YOLOv5 r6.2
anchor-based head) and the task-aligned assigner (TOOD; the anchor-free head)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from utils.geometry import bbox_iou

# Integer cell offsets: the target's own cell, then left, up, right, down neighbours.
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass
class AnchorMatches:
    """Positives of one level. All (N,) int64 except tbox (N,4) xywh and anchor (N,2), grid units.

    tbox xy is relative to the cell's top-left corner (range -0.5..1.5, what the decoder predicts).
    target indexes the batch's instance tensors (boxes, classes, masks).
    """

    image: Tensor
    anchor_idx: Tensor
    gj: Tensor
    gi: Tensor
    tbox: Tensor
    anchor: Tensor
    target: Tensor


def match_anchors(boxes: Tensor, batch_idx: Tensor, anchors: Tensor, grid_hw: tuple[int, int],
                  anchor_t: float) -> AnchorMatches:
    """boxes: (M,4) xywh grid units; anchors: (na,2) grid units -> the level's positives.

    A target matches every anchor whose width and height ratios both lie within 1/anchor_t..anchor_t;
    each match is assigned to the target's cell plus the two nearest neighbouring cells (x and y),
    so up to 3 cells per matched anchor.
    """
    ny, nx = grid_hw
    ratio = boxes[None, :, 2:4] / anchors[:, None, :]  # (na,M,2)
    ok = torch.maximum(ratio, 1 / ratio).amax(-1) < anchor_t
    a_idx, t_idx = ok.nonzero(as_tuple=True)
    xy, wh = boxes[t_idx, :2], boxes[t_idx, 2:4]
    frac, inv = xy % 1, (xy.new_tensor([nx, ny]) - xy)
    # Strict > 0.5 on the far side: a centre on a cell border gets one neighbour, not two
    # (the far one could not be reached by the decoder's -0.5..1.5 range).
    use = torch.stack((torch.ones_like(xy[:, 0], dtype=torch.bool),
                       (frac[:, 0] < 0.5) & (xy[:, 0] > 1), (frac[:, 1] < 0.5) & (xy[:, 1] > 1),
                       (frac[:, 0] > 0.5) & (inv[:, 0] > 1), (frac[:, 1] > 0.5) & (inv[:, 1] > 1)))
    k, n = use.nonzero(as_tuple=True)  # (offset, match) pairs
    offsets = xy.new_tensor(_NEIGHBOURS)[k]
    cell = (xy[n].floor() + offsets)
    cell[:, 0].clamp_(0, nx - 1)
    cell[:, 1].clamp_(0, ny - 1)
    t = t_idx[n]
    return AnchorMatches(image=batch_idx[t], anchor_idx=a_idx[n], gj=cell[:, 1].long(), gi=cell[:, 0].long(),
                         tbox=torch.cat((xy[n] - cell, wh[n]), 1), anchor=anchors[a_idx[n]], target=t)


@dataclass
class AlignedTargets:
    """Per-anchor targets of the task-aligned assigner. B images, A anchors, C classes.

    fg: (B,A) bool positives; target: (B,A) int64 index of the assigned gt into the padded (B,M)
    layout; boxes: (B,A,4) xyxy pixels; scores: (B,A,C) soft class targets (0 off positives).
    """

    fg: Tensor
    target: Tensor
    boxes: Tensor
    scores: Tensor


class TaskAlignedAssigner:
    """TOOD assignment: metric = score^alpha * IoU^beta over anchors whose centre lies in the gt box;
    each gt takes its top-k anchors; an anchor claimed by several gts keeps the one of highest IoU;
    soft targets = metric normalised so each gt's best anchor gets that gt's best IoU."""

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.topk, self.alpha, self.beta, self.eps = int(topk), float(alpha), float(beta), eps

    @torch.no_grad()
    def __call__(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_labels: Tensor,
                 gt_boxes: Tensor, gt_valid: Tensor) -> AlignedTargets:
        """scores: (B,A,C) probabilities; pred_boxes: (B,A,4) xyxy px; points: (A,2) px;
        gt_labels: (B,M) int64; gt_boxes: (B,M,4) xyxy px; gt_valid: (B,M) bool (padding is False)."""
        b, a, c = scores.shape
        if gt_boxes.shape[1] == 0:
            z = scores.new_zeros((b, a), dtype=torch.bool)
            return AlignedTargets(z, z.long(), pred_boxes.new_zeros((b, a, 4)), torch.zeros_like(scores))
        inside = self._centres_inside(points, gt_boxes) & gt_valid[..., None]  # (B,M,A)
        iou = bbox_iou(gt_boxes[:, :, None], pred_boxes[:, None]).clamp(min=0) * inside
        cls_score = scores.transpose(1, 2).gather(1, gt_labels[..., None].expand(-1, -1, a))  # (B,M,A)
        metric = cls_score.pow(self.alpha) * iou.pow(self.beta) * inside
        pos = self._topk_mask(metric) & inside
        pos = self._one_gt_per_anchor(pos, iou)
        fg = pos.any(1)
        target = pos.float().argmax(1)  # (B,A); meaningless where not fg
        boxes = gt_boxes.gather(1, target[..., None].expand(-1, -1, 4))
        labels = gt_labels.gather(1, target)
        metric, iou = metric * pos, iou * pos
        norm = metric * iou.amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + self.eps)
        soft = norm.amax(1)  # (B,A): the positive's own gt, the only non-zero entry after masking
        onehot = torch.zeros_like(scores).scatter_(2, labels[..., None], 1.0)
        return AlignedTargets(fg, target, boxes, onehot * (soft * fg)[..., None])

    def _centres_inside(self, points: Tensor, gt_boxes: Tensor) -> Tensor:
        """points: (A,2), gt_boxes: (B,M,4) -> (B,M,A) bool, centre strictly inside the box."""
        p = points[None, None]
        g = gt_boxes[:, :, None]
        d = torch.cat((p - g[..., :2], g[..., 2:] - p), -1)
        return d.amin(-1) > self.eps

    def _topk_mask(self, metric: Tensor) -> Tensor:
        """metric: (B,M,A) -> (B,M,A) bool, True at each gt's top-k anchors."""
        k = min(self.topk, metric.shape[-1])
        idx = metric.topk(k, dim=-1).indices
        return torch.zeros_like(metric, dtype=torch.bool).scatter_(-1, idx, True)

    @staticmethod
    def _one_gt_per_anchor(pos: Tensor, iou: Tensor) -> Tensor:
        """pos, iou: (B,M,A) -> pos where each anchor keeps only its highest-IoU gt."""
        multi = pos.sum(1, keepdim=True) > 1  # (B,1,A)
        if not multi.any():
            return pos
        best = (iou * pos).argmax(1, keepdim=True)
        keep = torch.zeros_like(pos).scatter_(1, best, True)
        return torch.where(multi, keep, pos)
