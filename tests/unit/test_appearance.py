"""Tracking's appearance cue: the backbone maps a PyTorch model already computes, pooled in each
detection's box (engine.infer.track.appearance)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.sequences import find_coco_source, load_sprites
from engine.infer.track.appearance import FeatureTap, attach_embeddings, embed
from models.model import build_model
from utils.structures import Detections


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("cfg/models/gp-n-seg.yaml", num_classes=80).eval()


@pytest.fixture(scope="module")
def sprites():
    return load_sprites(*find_coco_source(None))[0]  # real objects cut out of the bundled coco-mini


def paste(canvas: np.ndarray, sprite, x: int, y: int, height: int = 120) -> list[float]:
    """The sprite scaled to `height`, pasted by its mask with its corner at (x, y); its box."""
    w = max(1, round(sprite.mask.shape[1] * height / sprite.mask.shape[0]))
    image = cv2.resize(sprite.image, (w, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(sprite.mask.astype(np.uint8), (w, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    region = canvas[y:y + height, x:x + w]
    region[mask] = image[mask]
    return [float(x), float(y), float(x + w), float(y + height)]


def test_the_tap_finds_the_backbone_maps_and_leaves_the_outputs_alone(model):
    x = torch.rand(1, 3, 256, 320)
    with torch.no_grad():
        before = model(x)[0]
        tap = FeatureTap(model)
        after = model(x)[0]
    maps = tap.take()
    assert torch.equal(before, after)
    assert tap.strides == [8.0, 16.0]
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 40), (16, 20)]  # gp-n-seg's layers 4 and 6
    assert tap.take() is None  # handed over once
    tap.remove()
    with torch.no_grad():
        model(x)
    assert tap.take() is None


def test_an_object_looks_like_itself_elsewhere_and_not_like_another(official, sprites):
    """The real yolov5n: one object pasted at two places of one grey frame and, in a second
    frame, another object of the same size at the first place: the object's two boxes embed
    nearer to each other than to the other object's."""
    from engine.checkpoint import load_model

    model, _ = load_model(official / "yolov5n.pt", torch.device("cpu"), fuse=True)
    a, b = sorted(sprites, key=lambda s: -s.mask.sum())[:2]
    frames = [np.full((320, 640, 3), 114, np.uint8) for _ in range(2)]
    boxes = [paste(frames[0], a, 10, 20), paste(frames[0], a, 330, 160)]
    other = [paste(frames[1], b, 10, 20)]
    x = torch.from_numpy(np.stack(frames)[..., ::-1].transpose(0, 3, 1, 2).copy()).float() / 255
    tap = FeatureTap(model)
    with torch.no_grad():
        model(x)
    maps = tap.take()
    e = embed(maps, tap.strides, torch.tensor(boxes), 0)
    o = embed(maps, tap.strides, torch.tensor(other), 1)
    assert e.shape == (2, 4 * (64 + 128)) and torch.allclose(e.norm(dim=1), torch.ones(2))
    assert float(e[0] @ e[1]) > float(e[0] @ o[0]) + 0.05 and float(e[0] @ e[1]) > float(e[1] @ o[0]) + 0.05
    tap.remove()


def test_embeddings_follow_the_letterbox(model):
    """attach_embeddings maps original-pixel boxes through each image's scale and padding: the
    same box of one image letterboxed twice (two ratio/pads, one map) embeds the same."""
    tap = FeatureTap(model)
    with torch.no_grad():
        model(torch.rand(1, 3, 320, 320))
    maps = tap.take()
    d1 = Detections(torch.tensor([[10.0, 20.0, 110.0, 220.0]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))
    d2 = Detections(torch.tensor([[20.0, 40.0, 220.0, 440.0]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))
    attach_embeddings([d1], maps, tap.strides, [((1.0, 1.0), (16.0, 8.0))])
    attach_embeddings([d2], maps, tap.strides, [((0.5, 0.5), (16.0, 8.0))])
    assert torch.allclose(d1.embeddings, d2.embeddings, atol=1e-6)
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert attach_embeddings([empty], maps, tap.strides, [((1.0, 1.0), (0.0, 0.0))])[0].embeddings.shape == (0, 4 * (128 + 256))
    tap.remove()


@pytest.mark.parametrize("scale", [1 / 8, 1 / 16])
def test_the_pooling_equals_torchvision_roi_align(scale):
    """pool_boxes reads a channels-last map as it lies; its values are roi_align's (aligned,
    2 samples per bin), for boxes inside, across the edge, past it, and under one cell."""
    from torchvision.ops import roi_align

    from engine.infer.track.appearance import POOL, SAMPLES, pool_boxes

    torch.manual_seed(0)
    fmap = torch.randn(1, 16, 30, 40).contiguous(memory_format=torch.channels_last)
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0], [-20.0, -10.0, 40.0, 30.0], [300.0, 200.0, 330.0, 245.0],
                          [0.0, 0.0, 320.0, 240.0], [100.0, 100.0, 101.0, 103.0], [310.0, 230.0, 700.0, 600.0]])
    ref = roi_align(fmap.contiguous(), torch.cat([torch.zeros(len(boxes), 1), boxes], 1), POOL, scale, SAMPLES,
                    True).flatten(1)
    got = torch.from_numpy(pool_boxes(fmap[0], boxes, scale))
    assert got.shape == ref.shape and (got - ref).abs().max() < 1e-5
