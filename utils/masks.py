"""Instance masks: prototypes -> per-instance masks, box cropping, RLE for COCO results."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from utils.geometry import RatioPad, box_mask, input_to_orig


def crop_to_boxes(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero everything outside each (N,4) xyxy box (in the masks' pixel space); masks (N,H,W)."""
    return masks * box_mask(boxes, *masks.shape[1:])


def decode_masks(coef: Tensor, proto: Tensor, boxes_input: Tensor, input_shape: tuple[int, int],
                 orig_shape: tuple[int, int], ratio_pad: RatioPad, retina: bool = False) -> Tensor:
    """bool (N, h0, w0) masks in original pixels for one image.

    coef (N,nm) @ proto (nm,h,w) -> logits. The letterbox padding is cut off at prototype
    resolution and the rest is resized once, straight to the original size. Default: crop to the
    box at prototype resolution first (cheap); retina: resize the logits first and crop at full
    resolution (sharp box edges).
    """
    n = coef.shape[0]
    h0, w0 = orig_shape
    boxes_input = boxes_input.float()  # float16 pixel centres are 1-2 px apart beyond 1024 px
    if n == 0:
        return torch.zeros((0, h0, w0), dtype=torch.bool, device=coef.device)
    nm, ph, pw = proto.shape
    logits = (coef.float() @ proto.float().reshape(nm, -1)).view(n, ph, pw)  # a view too for channels-last protos
    ih, iw = input_shape
    gx, gy = pw / iw, ph / ih
    (sx, sy), (px, py) = ratio_pad
    top, bottom, left, right = image_window((ph, pw), input_shape, orig_shape, ratio_pad)
    if retina:
        full = F.interpolate(logits[None, :, top:bottom, left:right], size=(h0, w0), mode="bilinear",
                             align_corners=False)[0]
        # clipped to the image: the same crop, since every pixel lies inside it
        return crop_to_boxes((full > 0).to(torch.uint8), input_to_orig(boxes_input, ratio_pad, orig_shape)).bool()
    cropped = crop_to_boxes(logits.sigmoid(), boxes_input * boxes_input.new_tensor([gx, gy, gx, gy]))
    return paste_masks(cropped, input_shape, orig_shape, ratio_pad)


def image_window(proto_shape: tuple[int, int], input_shape: tuple[int, int], orig_shape: tuple[int, int],
                 ratio_pad: RatioPad) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows/columns of the image inside the letterbox, at prototype
    resolution. The letterbox reports its pad as a centred float (10.5 for 21 rows) and puts the
    image at the whole pixel below it, so masks are cut where the image is."""
    (ph, pw), (ih, iw), (h0, w0) = proto_shape, input_shape, orig_shape
    gx, gy = pw / iw, ph / ih
    (sx, sy), (px, py) = ratio_pad
    y0, x0 = math.floor(py), math.floor(px)
    top, left = int(round(y0 * gy)), int(round(x0 * gx))
    bottom, right = max(int(round((y0 + h0 * sy) * gy)), top + 1), max(int(round((x0 + w0 * sx) * gx)), left + 1)
    return top, bottom, left, right


def paste_masks(probs: Tensor, input_shape: tuple[int, int], orig_shape: tuple[int, int],
                ratio_pad: RatioPad) -> Tensor:
    """probs: (N, h, w) box-cropped mask probabilities at prototype resolution -> bool (N, h0, w0)
    in original pixels (the letterbox padding cut off, resized bilinearly, thresholded at 0.5):
    the decode's last step, shared with end-to-end exports whose masks come cropped."""
    h0, w0 = orig_shape
    if probs.shape[0] == 0:
        return torch.zeros((0, h0, w0), dtype=torch.bool, device=probs.device)
    top, bottom, left, right = image_window(tuple(probs.shape[-2:]), input_shape, orig_shape, ratio_pad)
    return F.interpolate(probs.float()[None, :, top:bottom, left:right], size=(h0, w0), mode="bilinear",
                         align_corners=False)[0] > 0.5


def encode_rle(masks: np.ndarray) -> list[dict]:
    """bool (N,H,W) -> COCO RLEs with str counts (JSON-ready)."""
    import pycocotools.mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def polygons_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """bool (H,W) from (K,2) polygons in pixels."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [p.round().astype(np.int32) for p in polygons], 1)
    return mask.astype(bool)
