"""Appearance embeddings from the detector's own features, for tracking: each detection's box is
ROI-pooled (2x2) on the backbone's last maps at strides 8 and 16, each level L2-normalised, the
levels concatenated. No second network runs: the maps are computed for the detection anyway, and
pooling a few boxes costs a fraction of a millisecond.

Why the backbone and not the neck the head reads: the neck is trained to say what an object is,
so two people look alike there; the backbone still holds their colours and textures. On the
generated sequences, the nearest track look picks the right object for 97-99 % of clean
detections from the backbone maps against 77-92 % from the neck's (benchmarks/tracking.py).

Only a PyTorch model exposes its layers; the exported runtimes track without this cue."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from utils.geometry import RatioPad
from utils.structures import Detections

STRIDES = (8, 16)  # the backbone maps pooled
POOL = 2           # ROI-align output size per side: where colours sit in the box (head vs legs)
SAMPLES = 2        # ROI-align samples per bin and side


class FeatureTap:
    """Keeps, on each forward pass of `model`, the outputs of its last backbone layer at each of
    STRIDES (forward hooks: the model and its outputs are untouched). take() hands them over and
    forgets them."""

    def __init__(self, model: nn.Module):
        layers = self._layers(model)
        self.strides = [float(s) for s in layers]
        self.layers = list(layers.values())  # the model's layer indices, one per stride
        self.maps: dict[int, torch.Tensor] = {}
        self._handles = [model.layers[i].register_forward_hook(self._keeper(k)) for k, i in enumerate(layers.values())]

    @staticmethod
    @torch.no_grad()
    def _layers(model: nn.Module) -> dict[int, int]:
        """stride -> index of the last backbone layer whose output has it, found by one small
        forward pass (a cfg says the layers, not their strides)."""
        n_backbone = len(model.yaml.get("backbone", [])) or len(model.layers) - 1
        size = 4 * int(max(model.stride.tolist()))
        shapes: dict[int, int] = {}
        hooks = [layer.register_forward_hook(lambda _m, _a, out, i=i: shapes.__setitem__(i, out.shape[-1]))
                 for i, layer in enumerate(model.layers[:n_backbone])]
        p = next(model.parameters())
        try:
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
        finally:
            for h in hooks:
                h.remove()
        found = {s: max((i for i, w in shapes.items() if size // w == s), default=None) for s in STRIDES}
        if None in found.values():
            raise ValueError(f"the model's backbone has no map at stride {[s for s, i in found.items() if i is None]}")
        return found

    def _keeper(self, k: int):
        def keep(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            self.maps[k] = out.detach()
        return keep

    def take(self) -> list[torch.Tensor] | None:
        maps = [self.maps[k] for k in sorted(self.maps)] if len(self.maps) == len(self.strides) else None
        self.maps = {}
        return maps

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def embed(maps: list[torch.Tensor], strides: list[float], boxes: torch.Tensor, index: int) -> torch.Tensor:
    """(N, D) float32 embeddings of `boxes` (N,4 xyxy input pixels) of image `index` of the batch
    the maps came from; every level weighs the same (each unit length, the whole too)."""
    rois = torch.cat([boxes.new_full((len(boxes), 1), float(index)), boxes], 1).to(maps[0].device, torch.float32)
    # contiguous (the CPU model runs channels-last) and 2x2 samples per bin: 0.4 ms a frame where
    # channels-last maps with adaptive sampling (a sample per map cell) took 1.3 ms
    parts = [F.normalize(roi_align(m.float().contiguous(), rois, POOL, 1.0 / s, SAMPLES, True).flatten(1), dim=1)
             for m, s in zip(maps, strides)]
    return (torch.cat(parts, 1) / len(parts) ** 0.5).cpu()


def attach_embeddings(dets: list[Detections], maps: list[torch.Tensor], strides: list[float],
                      ratio_pads: list[RatioPad]) -> list[Detections]:
    """Each image's Detections (original pixels) with `embeddings` set from the batch's maps."""
    maps = [m.float().contiguous() for m in maps]  # once for the batch (embed's copies are then free)
    for b, (d, ((sx, sy), (px, py))) in enumerate(zip(dets, ratio_pads)):
        boxes = d.boxes.float() * d.boxes.new_tensor([sx, sy, sx, sy]) + d.boxes.new_tensor([px, py, px, py])
        d.embeddings = embed(maps, strides, boxes, b)
    return dets
