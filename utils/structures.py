"""The typed contracts that cross package boundaries: one image, one batch, one head output,
one image's detections. Every producer and consumer in gradpath speaks these types."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from utils.geometry import RatioPad


@dataclass
class Sample:
    """One image and its instances, in the pixel space of `image` (before batching).

    image: uint8 (H,W,3) BGR. boxes: float32 (N,4) xyxy pixels. classes: int64 (N,) in 0..nc-1.
    segments: one float32 (K,2) polygon per instance, in pixels (several COCO polygons of one
    instance are joined into one ring); an instance with no polygon has its box's 4 corners.
    image_id: the dataset's own id (COCO image id, int64). orig_shape: (h0, w0) of the file.
    ratio_pad: ((sx, sy), (px, py)) with input_xy = orig_xy * s + p, set by letterbox/resize.
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    segments: list[np.ndarray]
    image_id: int
    path: str
    orig_shape: tuple[int, int]
    ratio_pad: RatioPad = ((1.0, 1.0), (0.0, 0.0))

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Batch:
    """A collated batch. Instance tensors are concatenated over images; `batch_idx` says whose.

    images: uint8 (B,3,H,W) RGB (the trainer converts to float 0..1 on the device).
    batch_idx: int64 (M,). classes: int64 (M,). boxes: float32 (M,4) xyxy input pixels.
    masks: uint8 (M, H/4, W/4) one binary mask per instance at prototype resolution.
    """

    images: Tensor
    batch_idx: Tensor
    classes: Tensor
    boxes: Tensor
    masks: Tensor
    image_ids: list[int]
    paths: list[str]
    orig_shapes: list[tuple[int, int]]
    ratio_pads: list[RatioPad]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.images), move(self.batch_idx), move(self.classes), move(self.boxes),
                     move(self.masks), self.image_ids, self.paths, self.orig_shapes, self.ratio_pads)

    def pin_memory(self) -> "Batch":
        """Page-locked copies, so `to(cuda, non_blocking=True)` overlaps with compute. The
        DataLoader's pin_memory thread calls this (it leaves objects without it unpinned)."""
        pin = lambda t: t.pin_memory()  # noqa: E731
        return Batch(pin(self.images), pin(self.batch_idx), pin(self.classes), pin(self.boxes), pin(self.masks),
                     self.image_ids, self.paths, self.orig_shapes, self.ratio_pads)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class HeadOutput:
    """Raw training-mode output of a detection head (see models/heads.py for the decoding).

    anchor-based: preds[i] is (B, na, H_i, W_i, 5 + nc + nm) logits [tx,ty,tw,th,obj,cls..,coef..];
    anchor-free:  preds[i] is (B, 4*reg_max + nc + nm, H_i, W_i) [ltrb bins.., cls.., coef..].
    proto: (B, nm, H/4, W/4) mask prototypes, or None for a detection-only head.
    strides: float (nl,). anchors: float (nl, na, 2) in pixels, or None for anchor-free.
    aux: the auxiliary heads' preds (anchor-based, same layout and levels as preds), or None.
    """

    kind: str  # "anchor" or "anchor_free"
    preds: list[Tensor]
    proto: Tensor | None
    strides: Tensor
    anchors: Tensor | None = None
    reg_max: int = 0
    nc: int = 80
    nm: int = 0
    aux: list[Tensor] | None = None


@dataclass
class Detections:
    """One image's final predictions, in original-image pixels.

    boxes: float32 (N,4) xyxy. scores: (N,). classes: int64 (N,) contiguous 0..nc-1.
    masks: bool (N, h0, w0), or None for a detection-only model.
    embeddings: float32 (N, D) unit-length appearance vectors, when tracking asked for them
    (engine.infer.track.appearance), else None.
    """

    boxes: Tensor
    scores: Tensor
    classes: Tensor
    masks: Tensor | None = None
    embeddings: Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass
class TrackedDetections(Detections):
    """One frame's tracked objects: Detections whose every row carries the identity of its track.

    track_ids: int64 (N,), >= 1, stable for one object over a source's frames. classes: the
    track's class (its majority over the frames seen), not the frame's own vote. frame: the
    source's frame index (from 0).
    """

    track_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    frame: int = 0


class RawOutput(NamedTuple):
    """A model's eval output, as every backend of a raw (not end-to-end) export returns it.

    pred: (B, N, 4 + nc + nm) xyxy input pixels, class probabilities, mask coefficients.
    proto: (B, nm, H/4, W/4) mask prototypes, or None for a detection-only model.
    """

    pred: Tensor
    proto: Tensor | None


@dataclass
class End2EndOutput:
    """Detections of an end-to-end export (NMS and mask assembly inside the graph), padded to K.

    num_dets: int (B,1) rows of each image that hold detections; the rest are zero.
    boxes: float32 (B,K,4) xyxy input pixels. scores: (B,K). classes: int (B,K) 0..nc-1.
    masks: float32 (B,K,H/4,W/4) sigmoid(coefficients @ prototypes) cropped to the box
    (threshold at 0.5 after resizing), or None for a detection-only model.
    """

    num_dets: Tensor
    boxes: Tensor
    scores: Tensor
    classes: Tensor
    masks: Tensor | None = None
