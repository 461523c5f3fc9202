"""Augmentations. Every geometric op moves image, boxes and polygons together; boxes are then
recomputed from the transformed polygons, so masks and boxes never drift apart."""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from utils.geometry import RatioPad
from utils.masks import polygons_to_mask
from utils.structures import Sample


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation (meanings and defaults: cfg/hyp/hyp.scratch-high.yaml): HSV gains,
    the random perspective's degrees/translate/scale/shear/perspective, flip, mosaic, mixup and
    copy-paste probabilities, and the albumentations multiplier."""

    hsv_h: float
    hsv_s: float
    hsv_v: float
    degrees: float
    translate: float
    scale: float
    shear: float
    perspective: float
    flipud: float
    fliplr: float
    mosaic: float
    mixup: float
    copy_paste: float
    albumentations: float


def letterbox_shape(hw: tuple[int, int], new_shape: int | tuple[int, int], auto: bool = False,
                    scaleup: bool = True, stride: int = 32) -> tuple[tuple[int, int], tuple[int, int]]:
    """((h, w) of the resized image, (h, w) of the padded output) that letterbox() gives an image
    of size hw: the output is new_shape, or with `auto` the resized image padded only up to the
    next stride multiple."""
    h0, w0 = hw
    nh, nw = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)
    rh, rw = int(round(h0 * r)), int(round(w0 * r))
    if auto:
        nh, nw = rh + (nh - rh) % stride, rw + (nw - rw) % stride
    return (rh, rw), (nh, nw)


def letterbox(image: np.ndarray, new_shape: int | tuple[int, int], color=(114, 114, 114), auto: bool = False,
              scaleup: bool = True, stride: int = 32) -> tuple[np.ndarray, RatioPad]:
    """Resize keeping aspect ratio and pad to new_shape (h, w), centred; ratio_pad maps orig ->
    input pixels.

    The pad reported is half the padding, a float, as the official YOLOv5/YOLOv7 letterbox
    reports it (their labels and box rescaling use it); the pixels start at round(pad - 0.1), so
    with an odd padding they lie 0.5 px above/left of it. Mapping boxes back with that integer
    offset instead put them 0.5 px off the official detections (IoU < 0.98 on small objects),
    for a dev32 box AP that differs by 0.0001.
    """
    h0, w0 = image.shape[:2]
    (rh, rw), (nh, nw) = letterbox_shape((h0, w0), new_shape, auto, scaleup, stride)
    if (rw, rh) != (w0, h0):  # bilinear both ways, as the official letterbox (see ImageReader for INTER_AREA)
        image = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    pw, ph = nw - rw, nh - rh
    top, left = int(round(ph / 2 - 0.1)), int(round(pw / 2 - 0.1))
    image = cv2.copyMakeBorder(image, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=color)
    return image, ((rw / w0, rh / h0), (pw / 2, ph / 2))


def apply_ratio_pad(sample: Sample, image: np.ndarray, rp: RatioPad) -> Sample:
    """Move a sample's labels with a letterbox/resize and compose its ratio_pad."""
    (sx, sy), (px, py) = rp
    (ox, oy), (opx, opy) = sample.ratio_pad
    boxes = sample.boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([px, py, px, py], np.float32)
    segs = map_points(sample.segments, lambda p: p * np.array([sx, sy], np.float32) + np.array([px, py], np.float32))
    return Sample(image, boxes, sample.classes, segs, sample.image_id, sample.path, sample.orig_shape,
                  ((ox * sx, oy * sy), (opx * sx + px, opy * sy + py)))


def _clip_half_plane(p: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """One Sutherland-Hodgman step, vectorised: the part of polygon p on one side of x|y = bound."""
    if len(p) == 0:
        return p
    q = np.roll(p, -1, 0)  # edge i runs p[i] -> q[i]
    a, b = p[:, axis] - bound, q[:, axis] - bound
    in_p, in_q = (a <= 0, b <= 0) if keep_below else (a >= 0, b >= 0)
    t = np.divide(a, a - b, out=np.zeros_like(a), where=(a - b) != 0)[:, None]
    cross = p + t * (q - p)
    # per edge: the crossing point (when the edge crosses), then q (when q is inside)
    pts = np.stack([cross, q], 1)
    valid = np.stack([in_p != in_q, in_q], 1)
    return pts[valid].astype(np.float32)


def map_points(segs: list[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """fn applied to every polygon's points in one numpy call (a mosaic holds ~30 polygons, and
    per-polygon calls cost more than the arithmetic)."""
    if not segs:
        return []
    return np.split(fn(np.concatenate(segs)), np.cumsum([len(s) for s in segs[:-1]]))


def polygon_bounds(segs: list[np.ndarray]) -> np.ndarray:
    """(N,4) x1y1x2y2 of each polygon; NaN for an empty one."""
    out = np.full((len(segs), 4), np.nan, np.float32)
    lens = np.array([len(s) for s in segs], np.int64)
    if lens.sum():
        full = lens > 0
        pts = np.concatenate(segs)
        starts = (np.cumsum(lens) - lens)[full]
        out[full] = np.concatenate([np.minimum.reduceat(pts, starts), np.maximum.reduceat(pts, starts)], 1)
    return out


def clip_polygons(segs: list[np.ndarray], rect: tuple[float, float, float, float]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each polygon's intersection with rect (x1, y1, x2, y2), and their (N,4) bounds; only the
    polygons that cross the rect's sides are clipped."""
    bounds = polygon_bounds(segs)
    x1, y1, x2, y2 = rect
    inside = (bounds[:, 0] >= x1) & (bounds[:, 1] >= y1) & (bounds[:, 2] <= x2) & (bounds[:, 3] <= y2)
    out = list(segs)
    for j in np.flatnonzero(~inside):
        c = clip_polygon(segs[j] - np.array([x1, y1], np.float32), x2 - x1, y2 - y1)
        out[j] = c + np.array([x1, y1], np.float32)
        bounds[j] = [*c.min(0), *c.max(0)] + np.array([x1, y1, x1, y1]) if len(c) else np.nan
    return out, bounds


def clip_polygon(s: np.ndarray, w: int, h: int) -> np.ndarray:
    """The polygon's intersection with the image rectangle [0,w]x[0,h] (possibly empty)."""
    if len(s) and s.min() >= 0 and s[:, 0].max() <= w and s[:, 1].max() <= h:
        return s  # entirely inside: most polygons
    for axis, bound, below in ((0, 0, False), (0, w, True), (1, 0, False), (1, h, True)):
        if len(s) and ((s[:, axis].max() > bound) if below else (s[:, axis].min() < bound)):
            s = _clip_half_plane(s, axis, bound, below)  # only the sides the polygon crosses
    return s


def boxes_from_segments(segs: list[np.ndarray], w: int, h: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Polygons clipped to the image, their (N,4) bounds (exactly what their masks cover), and
    which instances are still visible."""
    clipped, boxes = clip_polygons(segs, (0, 0, w, h))
    keep = np.array([len(c) >= 3 for c in clipped], bool)
    return clipped, np.where(keep[:, None], boxes, 0).astype(np.float32), keep


def random_affine(in_hw: tuple[int, int], out_hw: tuple[int, int], degrees=0.0, translate=0.1, scale=0.5,
                  shear=0.0, perspective=0.0) -> np.ndarray:
    """A random 3x3 map from input to output pixels: the input's centre goes to a jittered output
    centre, with rotation, scale, shear and (when perspective > 0) a projective part."""
    h, w = out_hw
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = random.uniform(-perspective, perspective), random.uniform(-perspective, perspective)
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D((0, 0), random.uniform(-degrees, degrees), random.uniform(1 - scale, 1 + scale))
    S = np.eye(3)
    S[0, 1], S[1, 0] = (math.tan(random.uniform(-shear, shear) * math.pi / 180) for _ in range(2))
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * w
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * h
    return T @ S @ R @ P @ C


def visible_region(M: np.ndarray, out_hw: tuple[int, int], in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) of the input pixels that M maps into the output (with one pixel
    of margin for interpolation), clipped to the input; empty when x1 <= x0 or y1 <= y0."""
    h, w = out_hw
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ np.linalg.inv(M).T
    xy = corners[:, :2] / corners[:, 2:3]
    x0, y0 = np.floor(xy.min(0)).astype(int) - 1
    x1, y1 = np.ceil(xy.max(0)).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, in_hw[1]), min(y1, in_hw[0])


def warp_image(img: np.ndarray, M: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """img mapped by M (pixel-edge coordinates: (0,0) is the top-left corner of the first pixel)
    onto an out_hw canvas of grey. Returns the image and the map actually applied, which the
    labels must use: a scale-and-shift M (no rotation, shear or perspective: the default recipe)
    is done as a resize of the visible crop, about 3x faster than a general warp, with its scale
    rounded to whole output pixels."""
    h, w = out_hw
    if M[0, 1] == M[1, 0] == M[2, 0] == M[2, 1] == 0:
        out = np.full((h, w, 3), 114, np.uint8)
        x0, y0, x1, y1 = visible_region(M, out_hw, img.shape[:2])
        dx0, dy0 = round(x0 * M[0, 0] + M[0, 2]), round(y0 * M[1, 1] + M[1, 2])
        dx1, dy1 = round(x1 * M[0, 0] + M[0, 2]), round(y1 * M[1, 1] + M[1, 2])
        if x1 <= x0 or y1 <= y0 or dx1 <= dx0 or dy1 <= dy0:
            return out, M
        patch = cv2.resize(img[y0:y1, x0:x1], (dx1 - dx0, dy1 - dy0), interpolation=cv2.INTER_LINEAR)
        cx0, cy0, cx1, cy1 = max(dx0, 0), max(dy0, 0), min(dx1, w), min(dy1, h)
        out[cy0:cy1, cx0:cx1] = patch[cy0 - dy0:cy1 - dy0, cx0 - dx0:cx1 - dx0]
        ex, ey = (dx1 - dx0) / (x1 - x0), (dy1 - dy0) / (y1 - y0)  # exactly what resize did to the crop
        return out, np.array([[ex, 0, dx0 - x0 * ex], [0, ey, dy0 - y0 * ey], [0, 0, 1]])
    # OpenCV maps pixel centres (integer indices); shift M by half a pixel each side so the image
    # moves exactly as the labels do
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    Mc = np.linalg.inv(half) @ M @ half
    if M[2, 0] or M[2, 1]:
        return cv2.warpPerspective(img, Mc, (w, h), borderValue=(114, 114, 114)), M
    return cv2.warpAffine(img, Mc[:2], (w, h), borderValue=(114, 114, 114)), M


def warp(sample: Sample, M: np.ndarray, out_hw: tuple[int, int], min_area_ratio: float = 0.1) -> Sample:
    """Image and polygons through the same map, then clipped; boxes recomputed from the polygons."""
    img, M = warp_image(sample.image, M, out_hw)
    projective = bool(M[2, 0] or M[2, 1])

    def move(p: np.ndarray) -> np.ndarray:  # straight edges stay straight, so exact clipping afterwards suffices
        xy = p @ M[:2, :2].T.astype(np.float32) + M[:2, 2].astype(np.float32)
        return xy / (p @ M[2, :2].astype(np.float32) + np.float32(M[2, 2]))[:, None] if projective else xy

    segs = map_points(sample.segments, move)
    return filter_instances(Sample(img, sample.boxes, sample.classes, segs, sample.image_id, sample.path,
                                   sample.orig_shape, sample.ratio_pad), abs(np.linalg.det(M[:2, :2])), min_area_ratio)


def random_perspective(sample: Sample, out_hw: tuple[int, int], degrees=0.0, translate=0.1, scale=0.5, shear=0.0,
                       perspective=0.0, min_area_ratio: float = 0.1) -> Sample:
    """Rotation, scale, shear, translation and perspective as one 3x3 warp of image and polygons."""
    M = random_affine(sample.image.shape[:2], out_hw, degrees, translate, scale, shear, perspective)
    return warp(sample, M, out_hw, min_area_ratio)


def min_area_ratio(has_polygons: bool) -> float:
    """The share of its area an instance must keep through a crop: 0.01 when labels are polygons (the
    box is recomputed from the visible outline, so even a small visible part has a true box), 0.1
    when they are boxes only (a cropped box may no longer hold any of the object). YOLOv5 and
    YOLOv7 use these two thresholds in the same way."""
    return 0.01 if has_polygons else 0.1


def filter_instances(sample: Sample, old_area_scale: float = 1.0, min_area_ratio: float = 0.1,
                     min_size: float = 2.0, max_aspect: float = 20.0) -> Sample:
    """Clip polygons to the image and recompute boxes; keep an instance whose box is wider and taller
    than min_size px, less elongated than max_aspect, and whose area is over min_area_ratio of its
    box before the warp (sample.boxes, times old_area_scale)."""
    h, w = sample.image.shape[:2]
    clipped, boxes, keep = boxes_from_segments(sample.segments, w, h)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    old = sample.boxes
    old_area = (old[:, 2] - old[:, 0]) * (old[:, 3] - old[:, 1]) * old_area_scale if len(old) else np.zeros(0)
    ar = np.maximum(bw / (bh + 1e-9), bh / (bw + 1e-9))
    keep &= (bw > min_size) & (bh > min_size) & (bw * bh / (old_area + 1e-9) > min_area_ratio) & (ar < max_aspect)
    segs = [s for s, k in zip(clipped, keep) if k]
    return Sample(sample.image, boxes[keep], sample.classes[keep], segs, sample.image_id, sample.path,
                  sample.orig_shape, sample.ratio_pad)


@dataclass
class Tile:
    """A mosaic image before it is read: its size after the long-side resize, and how to read it
    (a tile that lands outside the output is never read)."""

    shape: tuple[int, int]
    load: Callable[[], Sample]


def _tile_rect(k: int, hw: tuple[int, int], xc: int, yc: int, side: int) -> tuple[int, int, int, int, int, int]:
    """Canvas rectangle (x1, y1, x2, y2) of tile k (0 top-left, 1 top-right, 2 bottom-left, 3
    bottom-right of the centre) and the offset (dx, dy) from tile to canvas pixels."""
    h, w = hw
    x1, x2 = (max(xc - w, 0), xc) if k in (0, 2) else (xc, min(xc + w, side))
    y1, y2 = (max(yc - h, 0), yc) if k in (0, 1) else (yc, min(yc + h, side))
    dx = x1 - (w - (x2 - x1)) if k in (0, 2) else x1
    dy = y1 - (h - (y2 - y1)) if k in (0, 1) else y1
    return x1, y1, x2, y2, dx, dy


def mosaic4(tiles: list[Tile | Sample], size: int, aug: AugmentParams, min_area_ratio: float = 0.1) -> Sample:
    """Four images around a random centre of a 2*size canvas, then a random perspective to size.
    Only the part of the canvas the perspective keeps is built, and only the images in it are read."""
    s = size
    yc, xc = (int(random.uniform(s * 0.5, s * 1.5)) for _ in range(2))
    M = random_affine((2 * s, 2 * s), (s, s), aug.degrees, aug.translate, aug.scale, aug.shear, aug.perspective)
    vx0, vy0, vx1, vy1 = visible_region(M, (s, s), (2 * s, 2 * s))
    canvas = np.full((max(vy1 - vy0, 1), max(vx1 - vx0, 1), 3), 114, np.uint8)
    boxes, classes, segs, first = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)], [], None
    for k, tile in enumerate(tiles):
        hw = tile.image.shape[:2] if isinstance(tile, Sample) else tile.shape
        x1, y1, x2, y2, _, _ = _tile_rect(k, hw, xc, yc, 2 * s)
        if k and (min(x2, vx1) <= max(x1, vx0) or min(y2, vy1) <= max(y1, vy0)):
            continue  # outside what the output shows (the first tile names the sample, so it is always read)
        smp = tile if isinstance(tile, Sample) else tile.load()
        first = smp if k == 0 else first
        x1, y1, x2, y2, dx, dy = _tile_rect(k, smp.image.shape[:2], xc, yc, 2 * s)  # the image read decides
        cx1, cy1, cx2, cy2 = max(x1, vx0), max(y1, vy0), min(x2, vx1), min(y2, vy1)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        canvas[cy1 - vy0:cy2 - vy0, cx1 - vx0:cx2 - vx0] = smp.image[cy1 - dy:cy2 - dy, cx1 - dx:cx2 - dx]
        off = np.array([dx - vx0, dy - vy0], np.float32)
        # what lies outside the visible part is dropped here; what crosses the tile's edges (where
        # the canvas cropped the image) is clipped, or its labels would cover grey when zoomed out.
        # What crosses only the visible part's edges is clipped once, after the warp.
        moved = map_points(smp.segments, lambda p: p + off)
        pb = polygon_bounds(moved)
        seen = (pb[:, 0] < cx2 - vx0) & (pb[:, 2] > cx1 - vx0) & (pb[:, 1] < cy2 - vy0) & (pb[:, 3] > cy1 - vy0)
        moved = [m for m, v in zip(moved, seen) if v]
        clipped, _ = clip_polygons(moved, (x1 - vx0, y1 - vy0, x2 - vx0, y2 - vy0))
        kept = np.flatnonzero(seen)[[len(c) >= 3 for c in clipped]] if clipped else np.zeros(0, np.int64)
        # clipped to the tile: filter_instances compares what the output keeps with what the
        # mosaic showed, so an object the tile's edge cut is not also counted as lost there
        boxes.append(np.clip(smp.boxes[kept] + np.tile(off, 2), [x1 - vx0, y1 - vy0] * 2, [x2 - vx0, y2 - vy0] * 2))
        classes.append(smp.classes[kept])
        segs += [c for c in clipped if len(c) >= 3]
    merged = Sample(canvas, np.concatenate(boxes).reshape(-1, 4), np.concatenate(classes), segs, first.image_id,
                    first.path, first.orig_shape)
    shift = np.array([[1, 0, vx0], [0, 1, vy0], [0, 0, 1]], np.float64)
    return warp(merged, M @ shift, (s, s), min_area_ratio)


def mixup(a: Sample, b: Sample) -> Sample:
    """Blend two same-size training images and keep both label sets."""
    r = float(np.random.beta(32.0, 32.0))
    img = cv2.addWeighted(a.image, r, b.image, 1 - r, 0)
    return Sample(img, np.concatenate([a.boxes, b.boxes]), np.concatenate([a.classes, b.classes]),
                  a.segments + b.segments, a.image_id, a.path, a.orig_shape, a.ratio_pad)


def copy_paste(sample: Sample, p: float) -> Sample:
    """Paste mirrored copies of instances where they do not cover existing ones (IoA < 0.3)."""
    k = round(p * len(sample))
    if k == 0:
        return sample
    img = sample.image.copy()
    h, w = img.shape[:2]
    boxes, classes, segs = list(sample.boxes), list(sample.classes), list(sample.segments)
    for j in random.sample(range(len(sample)), k=k):
        s = sample.segments[j].copy()
        s[:, 0] = w - s[:, 0]
        b = np.array([s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()], np.float32)
        inter = (np.minimum(b[2], sample.boxes[:, 2]) - np.maximum(b[0], sample.boxes[:, 0])).clip(0) * \
                (np.minimum(b[3], sample.boxes[:, 3]) - np.maximum(b[1], sample.boxes[:, 1])).clip(0)
        ioa = inter / ((sample.boxes[:, 2] - sample.boxes[:, 0]) * (sample.boxes[:, 3] - sample.boxes[:, 1]) + 1e-9)
        if ioa.max() >= 0.3:
            continue
        mask = polygons_to_mask([sample.segments[j]], (h, w))[:, ::-1]
        img[mask] = sample.image[:, ::-1][mask]
        boxes.append(b)
        classes.append(sample.classes[j])
        segs.append(s)
    return Sample(img, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64), segs,
                  sample.image_id, sample.path, sample.orig_shape, sample.ratio_pad)


class Photometric:
    """Photometric-only albumentations ops (the image changes, geometry does not), each applied
    with probability p. The draws are made here and only the ops that fire are called:
    albumentations' Compose costs ~0.35 ms per image even when, as 93% of the time at p = 0.01,
    none fires."""

    def __init__(self, ops: list, p: float):
        self.ops, self.p = ops, p

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for op in self.ops:
            if random.random() < self.p:
                image = op(image=image)["image"]
        return image


def build_photometric(strength: float) -> Photometric | None:
    """The ops at probability 0.01 * strength each; None when strength is 0. Raises if
    albumentations is not installed."""
    if strength <= 0:
        return None
    try:
        import albumentations as A
    except ImportError:
        raise ImportError("hyp 'albumentations' > 0 needs the albumentations package (pip install albumentations)") \
            from None
    ops = [A.Blur(p=1), A.MedianBlur(p=1), A.ToGray(p=1), A.CLAHE(p=1), A.RandomBrightnessContrast(p=1),
           A.RandomGamma(p=1), A.ImageCompression(quality_range=(75, 100), p=1)]
    return Photometric(ops, min(0.01 * strength, 1.0))


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """Random hue/saturation/value gains, as one 3-channel lookup table in HSV space."""
    if not (hgain or sgain or vgain):
        return img
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(256, dtype=np.float32)
    lut = np.stack([(x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)], -1)
    hsv = cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), lut.astype(np.uint8)[:, None])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def flip(sample: Sample, horizontal: bool) -> Sample:
    h, w = sample.image.shape[:2]
    img = cv2.flip(sample.image, 1 if horizontal else 0)  # ~40x faster than copying a numpy view
    b = sample.boxes.copy()
    if horizontal:
        b[:, [0, 2]] = w - sample.boxes[:, [2, 0]]
        segs = map_points(sample.segments, lambda p: p * np.float32([-1, 1]) + np.float32([w, 0]))
    else:
        b[:, [1, 3]] = h - sample.boxes[:, [3, 1]]
        segs = map_points(sample.segments, lambda p: p * np.float32([1, -1]) + np.float32([0, h]))
    return Sample(img, b, sample.classes, segs, sample.image_id, sample.path, sample.orig_shape, sample.ratio_pad)


def rasterize(segments: list[np.ndarray], shape: tuple[int, int], downsample: int = 4) -> np.ndarray:
    """(N, H/ds, W/ds) uint8 instance masks from polygons in input pixels."""
    h, w = shape[0] // downsample, shape[1] // downsample
    masks = np.zeros((len(segments), h, w), np.uint8)
    for m, s in zip(masks, segments):
        m[polygons_to_mask([s / downsample], (h, w))] = 1
    return masks
