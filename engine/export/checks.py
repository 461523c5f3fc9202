"""Every export is run once on a real image and compared with the PyTorch model before the file
is kept: raw outputs by their largest difference, end-to-end outputs by the detections they give
against utils.postprocess on the same input."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from data.augment import letterbox
from utils.geometry import box_iou
from utils.structures import Detections

ROOT = Path(__file__).resolve().parents[2]
CHECK_IMAGE = ROOT / "datasets" / "coco-mini" / "images" / "000000040961.jpg"


class ExportError(RuntimeError):
    """An export that cannot be made (a bad option, a missing runtime); one line, nothing kept."""


class CheckFailed(ExportError):
    """An export whose check against PyTorch failed: the file was not kept."""


def check_input(img_size: int, batch: int = 1, image: Path = CHECK_IMAGE):
    """(x float (batch,3,S,S) 0-1 RGB, orig (h0,w0), ratio_pad): the image letterboxed to a square."""
    bgr = cv2.imread(str(image))
    if bgr is None:
        raise ExportError(f"{image}: the check image cannot be read")
    img, rp = letterbox(bgr, img_size)
    x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).float() / 255.0
    return x[None].repeat(batch, 1, 1, 1), bgr.shape[:2], rp


def max_abs_diff(got: list[np.ndarray], ref: list[Tensor]) -> float:
    """Largest absolute difference over all outputs (raw exports)."""
    if len(got) != len(ref):
        raise ExportError(f"the export has {len(got)} outputs, the model {len(ref)}")
    return float(max(np.abs(np.asarray(g, np.float32) - r.detach().float().cpu().numpy()).max() for g, r in zip(got, ref)))


@dataclass
class DetectionDiff:
    """How an export's detections of one image differ from PyTorch's."""

    n_ref: int
    n_got: int
    unmatched: int  # detections of either side with no same-class partner at IoU >= 0.5
    min_box_iou: float  # over matched pairs (1.0 when there are none)
    max_score_diff: float
    min_mask_iou: float
    masks: bool = False  # whether masks were compared

    @property
    def largest(self) -> str:
        return (f"{self.n_got} vs {self.n_ref} detections, {self.unmatched} unmatched, box IoU >= {self.min_box_iou:.4f}, "
                f"score diff <= {self.max_score_diff:.2e}" + (f", mask IoU >= {self.min_mask_iou:.4f}" if self.masks else ""))

    def ok(self, box_iou_min: float = 0.99, score_tol: float = 1e-3, mask_iou_min: float = 0.98) -> bool:
        return (self.unmatched == 0 and self.min_box_iou >= box_iou_min and self.max_score_diff <= score_tol
                and self.min_mask_iou >= mask_iou_min)


def compare_detections(ref: Detections, got: Detections, floor: float = -1.0) -> DetectionDiff:
    """One-to-one matching of the largest total IoU, same class only, pairs at IoU >= 0.5. Detections scoring <= floor are
    matched when they can be but not counted when they cannot: at a top-k cut, near-equal scores
    on either side of it may swap between runtimes."""
    from scipy.optimize import linear_sum_assignment

    iou = box_overlap(ref.boxes.float(), got.boxes.float()) * (ref.classes[:, None] == got.classes[None, :])
    rows, cols = linear_sum_assignment(iou.cpu().numpy(), maximize=True)  # greedy mispairs chains of edge slivers
    pairs = [(i, j, float(iou[i, j])) for i, j in zip(rows.tolist(), cols.tolist()) if iou[i, j] >= 0.5]
    score = max((abs(float(ref.scores[i]) - float(got.scores[j])) for i, j, _ in pairs), default=0.0)
    mask = 1.0
    if ref.masks is not None and got.masks is not None and pairs:
        i, j = (torch.tensor(v) for v in list(zip(*pairs))[:2])
        mask = mask_iou(ref.masks[i], got.masks[j])
    lone_ref = [i for i in range(len(ref)) if i not in {p[0] for p in pairs} and ref.scores[i] > floor]
    lone_got = [j for j in range(len(got)) if j not in {p[1] for p in pairs} and got.scores[j] > floor]
    swaps = _near_tie_swaps(ref, got, lone_ref, lone_got)
    return DetectionDiff(len(ref), len(got), len(lone_ref) + len(lone_got) - 2 * swaps,
                         min((p[2] for p in pairs), default=1.0), score, mask, ref.masks is not None)


def _near_tie_swaps(ref: Detections, got: Detections, lone_ref: list[int], lone_got: list[int],
                    score_tol: float = 1e-4) -> int:
    """Unmatched pairs that are one decision taken the other way on a tie within score_tol: NMS
    keeping the other of two overlapping boxes of a class, or a box's best class chosen among two
    equal probabilities (saturated sigmoids are exactly 1.0 in one runtime and not in another)."""
    used, swaps = set(), 0
    for i in lone_ref:
        for j in lone_got:
            if j in used or abs(float(ref.scores[i] - got.scores[j])) > score_tol:
                continue
            overlap = float(box_overlap(ref.boxes[i:i + 1].float(), got.boxes[j:j + 1].float()))
            if (ref.classes[i] == got.classes[j] and overlap > 0) or overlap >= 0.99:
                used.add(j)
                swaps += 1
                break
    return swaps


def box_overlap(a: Tensor, b: Tensor, tol: float = 0.5) -> Tensor:
    """(N,M) IoU, with 1 for boxes within tol pixels of each other: boxes clipped to an image edge
    can have no area, and two equal ones then have IoU 0."""
    close = (a[:, None] - b[None]).abs().amax(-1) <= tol
    return torch.where(close, torch.ones_like(close, dtype=a.dtype), box_iou(a, b))


MIN_MASK_AREA = 32 * 32  # COCO's small/medium boundary, in original pixels


def mask_iou(a: Tensor, b: Tensor) -> float:
    """Agreement of paired bool masks (N,H,W): the lowest IoU of the pairs whose union covers at
    least MIN_MASK_AREA pixels, and the IoU of all pixels pooled, whichever is lower. A mask of a
    few hundred pixels loses 0.02 IoU to a handful of pixels at the 0.5 threshold, which float
    rounding between runtimes can move; the pooled IoU still counts them."""
    inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
    big = union >= MIN_MASK_AREA
    pooled = float(inter.sum() / union.sum()) if union.sum() else 1.0
    return min(pooled, float((inter[big] / union[big]).min()) if big.any() else 1.0)
