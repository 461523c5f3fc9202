"""Detection confusion matrix: detections above a confidence matched to ground truth by box IoU."""
from __future__ import annotations

import numpy as np
import torch

from utils.geometry import box_iou


class ConfusionMatrix:
    """(nc+1) x (nc+1) counts: rows = predicted class (last = missed ground truth), columns = true
    class (last = background, i.e. a false positive)."""

    def __init__(self, nc: int, conf: float = 0.25, iou: float = 0.45):
        self.nc, self.conf, self.iou = nc, conf, iou
        self.matrix = np.zeros((nc + 1, nc + 1), np.int64)

    def update(self, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, gt_boxes: np.ndarray,
               gt_classes: np.ndarray) -> None:
        keep = scores >= self.conf
        boxes, classes = boxes[keep].float().cpu(), classes[keep].cpu().numpy()
        gt_b = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
        if len(gt_b) == 0:
            np.add.at(self.matrix, (classes, self.nc), 1)
            return
        if len(boxes) == 0:
            np.add.at(self.matrix, (self.nc, gt_classes), 1)
            return
        iou = box_iou(gt_b, boxes).numpy()  # (G, D)
        gi, di = np.nonzero(iou > self.iou)
        order = np.argsort(-iou[gi, di])  # greedy one-to-one matching, best IoU first
        used_g, used_d = set(), set()
        for g, d in zip(gi[order], di[order]):
            if g in used_g or d in used_d:
                continue
            used_g.add(g)
            used_d.add(d)
            self.matrix[classes[d], gt_classes[g]] += 1
        for g in set(range(len(gt_b))) - used_g:
            self.matrix[self.nc, gt_classes[g]] += 1
        for d in set(range(len(boxes))) - used_d:
            self.matrix[classes[d], self.nc] += 1
