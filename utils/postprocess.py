"""From the model's eval output to per-image Detections in original pixels: confidence filter,
class-aware NMS, and mask decoding (or, for an end-to-end export, only the mapping back to
original pixels). Shared by the evaluator, the predictor and every inference backend."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from utils.geometry import RatioPad, input_to_orig
from utils.masks import decode_masks, paste_masks
from utils.structures import Detections, End2EndOutput, RawOutput

MAX_NMS_INPUT = 30000  # candidates kept (by score) before NMS, so a random model cannot stall it


def select(pred: Tensor, nc: int, conf_thres: float, iou_thres: float, max_det: int, multi_label: bool,
           classes: list[int] | None, agnostic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image's (N, 4+nc+nm) -> kept (boxes, scores, classes, coefficients) in input pixels."""
    boxes, scores, coefs = pred[:, :4], pred[:, 4:4 + nc], pred[:, 4 + nc:]
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        conf = scores[i, j]
    else:
        # the best class of the rows that pass only: max with indices costs 3.6x amax on a (25200, 80)
        # view (2.2 vs 0.6 ms on one CPU thread); where most rows pass (val.py's 0.001), all at once
        i = (scores.amax(1) > conf_thres).nonzero(as_tuple=True)[0]
        if len(i) * 4 < len(scores):
            conf, j = scores[i].max(1)
        else:
            conf, j = scores.max(1)
            conf, j = conf[i], j[i]
    if classes is not None:
        keep = torch.isin(j, torch.as_tensor(classes, device=j.device))
        i, j, conf = i[keep], j[keep], conf[keep]
    if conf.numel() > MAX_NMS_INPUT:
        top = conf.topk(MAX_NMS_INPUT).indices
        i, j, conf = i[top], j[top], conf[top]
    b = boxes[i]
    keep = batched_nms(b.float(), conf.float(), torch.zeros_like(j) if agnostic else j, iou_thres)[:max_det]
    return b[keep], conf[keep], j[keep], coefs[i[keep]]


def postprocess(pred: Tensor, proto: Tensor | None, input_shape: tuple[int, int],
                orig_shapes: list[tuple[int, int]], ratio_pads: list[RatioPad], conf_thres: float = 0.25,
                iou_thres: float = 0.45, max_det: int = 300, multi_label: bool = False,
                classes: list[int] | None = None, agnostic: bool = False, retina_masks: bool = False,
                nm: int = 0) -> list[Detections]:
    """pred (B, N, 4+nc+nm) xyxy input pixels / class probabilities / mask coefficients."""
    nm = proto.shape[1] if proto is not None else nm
    nc = pred.shape[-1] - 4 - nm
    out = []
    for b in range(pred.shape[0]):
        boxes, scores, cls, coefs = select(pred[b], nc, conf_thres, iou_thres, max_det, multi_label, classes, agnostic)
        masks = None
        if proto is not None:
            masks = decode_masks(coefs, proto[b], boxes, input_shape, orig_shapes[b], ratio_pads[b], retina_masks)
        out.append(Detections(input_to_orig(boxes.float(), ratio_pads[b], orig_shapes[b]), scores.float(),
                              cls.long(), masks))
    return out


def end2end_postprocess(out: End2EndOutput, input_shape: tuple[int, int], orig_shapes: list[tuple[int, int]],
                        ratio_pads: list[RatioPad], classes: list[int] | None = None, conf_thres: float = 0.0,
                        max_det: int | None = None) -> list[Detections]:
    """An end-to-end export's padded detections -> per-image Detections in original pixels. Its
    NMS, thresholds and top-k were baked in at export; a higher conf_thres, `classes` and a
    smaller max_det still apply (rows come sorted by score)."""
    dets = []
    for b in range(out.boxes.shape[0]):
        k = int(out.num_dets[b, 0])
        cls, scores = out.classes[b, :k].long(), out.scores[b, :k].float()
        keep = scores > conf_thres
        if classes is not None:
            keep &= torch.isin(cls, torch.as_tensor(classes, device=cls.device))
        keep = keep.nonzero()[:, 0][:max_det]
        masks = None
        if out.masks is not None:
            masks = paste_masks(out.masks[b, keep], input_shape, orig_shapes[b], ratio_pads[b])
        dets.append(Detections(input_to_orig(out.boxes[b, keep].float(), ratio_pads[b], orig_shapes[b]), scores[keep],
                               cls[keep], masks))
    return dets


def to_detections(out: RawOutput | End2EndOutput, input_shape: tuple[int, int], orig_shapes: list[tuple[int, int]],
                  ratio_pads: list[RatioPad], conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300,
                  classes: list[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                  retina_masks: bool = False) -> list[Detections]:
    """Any inference backend's output -> per-image Detections: raw outputs through postprocess,
    end-to-end ones (selected inside the graph; iou_thres, agnostic, multi_label and retina_masks
    were fixed at export) through end2end_postprocess."""
    if isinstance(out, End2EndOutput):
        return end2end_postprocess(out, input_shape, orig_shapes, ratio_pads, classes, conf_thres, max_det)
    pred, proto = out
    return postprocess(pred, proto, input_shape, orig_shapes, ratio_pads, conf_thres, iou_thres, max_det,
                       classes=classes, agnostic=agnostic, multi_label=multi_label, retina_masks=retina_masks)
