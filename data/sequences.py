"""Synthetic multi-object tracking sequences made of real COCO objects: each object is cut out of
its photo by its own instance mask and pasted, moving, over an empty COCO scene. Objects move in
straight lines and bounce off the frame's edges, cross and hide each other (a fixed depth order),
some enter late and some leave early. Written as an mp4 plus MOT ground truth with visibility:

    frame,id,x,y,w,h,1,class,visibility      (frames from 1; box clipped to the frame; class 0..79)

visibility = the share of the object's mask pixels that are drawn on top in that frame (the rest
is hidden behind nearer objects). Everything is drawn from one seed: same seed, same sequence.

    python -m data.sequences OUT_DIR [--data ANN_JSON IMAGES_DIR] [--names crossing,...] [--seed-offset N]
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "datasets" / "coco-mini"


@dataclass(frozen=True)
class SequenceSpec:
    """What one sequence looks like; `seed` decides everything else (objects, paths, timing)."""

    name: str
    seed: int
    frames: int = 300
    fps: float = 25.0
    size: tuple[int, int] = (480, 640)        # (h, w) of the video
    objects: int = 6                          # present from the first frame
    arrivals: int = 0                         # enter from an edge later on
    departures: int = 0                       # of the objects, how many leave through an edge early
    crossings: int = 0                        # pairs of the first objects sent to meet at one point
    speed: tuple[float, float] = (2.0, 6.0)   # pixels per frame
    height: tuple[int, int] = (80, 170)       # pasted object height in pixels
    one_class: bool = False                   # all objects of the most common class (hardest identities)


# The benchmark's sequences: each stresses something else. Seeds fixed so figures can be rerun.
SEQUENCES: dict[str, SequenceSpec] = {s.name: s for s in (
    SequenceSpec("crossing", seed=11, objects=6, crossings=3),
    SequenceSpec("same-class", seed=12, objects=6, crossings=3, one_class=True),
    SequenceSpec("crowd", seed=13, objects=9, crossings=3, height=(70, 140), speed=(1.5, 4.5)),
    SequenceSpec("fast", seed=14, objects=5, crossings=2, speed=(7.0, 12.0)),
    SequenceSpec("arrivals", seed=15, objects=3, arrivals=4, departures=2, crossings=1, speed=(2.0, 5.0)),
)}


@dataclass
class Sprite:
    """A real object cut out of its photo. image: uint8 (h,w,3) BGR; mask: bool (h,w)."""

    image: np.ndarray
    mask: np.ndarray
    cls: int           # contiguous class index (position in the id-sorted category list)
    source: str        # "file_name#annotation_id", for the record


@dataclass
class Mover:
    """One object's path. Box position is its top-left corner in float pixels."""

    sprite: Sprite
    x: float
    y: float
    vx: float
    vy: float
    start: int          # first frame (0-based) it moves in
    end: int            # from this frame on it stops bouncing and leaves through an edge
    inside: bool = False  # bounces only once it has been fully inside the frame
    track_id: int = 0


@dataclass
class Sequence:
    """A rendered sequence: frames, MOT ground-truth rows and the spec it came from."""

    spec: SequenceSpec
    frames: list[np.ndarray]
    gt: list[tuple]          # (frame, id, x, y, w, h, cls, visibility), frame from 1
    sources: list[str] = field(default_factory=list)  # the object of track id k is sources[k - 1]


def find_coco_source(shared_data: Path | None = None) -> tuple[Path, Path]:
    """(annotation JSON, image folder): coco128 from ../shared/data when there, else the bundled
    coco-mini (fewer objects, same kind of annotations)."""
    if shared_data is not None:
        c128 = shared_data / "dev" / "coco128_instances"
        ann = c128 / "annotations" / "instances_train2017.json"
        if ann.is_file():
            return ann, c128 / "images" / "train2017"
    return BUNDLED / "annotations" / "instances_train.json", BUNDLED / "images"


def _ann_mask(ann: dict, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    rles = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) else [seg]
    return mask_utils.decode(mask_utils.merge(rles if isinstance(rles, list) else [rles])).astype(bool)


def _whole_objects(anns: list[dict], w: int, h: int, min_side: int) -> list[dict]:
    """Annotations worth cutting out: not crowd, large, not cut by the photo's border and not
    covered by another annotated object's box (a half-hidden object makes a broken cut-out)."""
    keep = []
    boxes = [a["bbox"] for a in anns if not a["iscrowd"]]
    for a in anns:
        x, y, bw, bh = a["bbox"]
        if a["iscrowd"] or min(bw, bh) < min_side or x < 2 or y < 2 or x + bw > w - 2 or y + bh > h - 2:
            continue
        covered = 0.0
        for ox, oy, ow, oh in boxes:
            if (ox, oy, ow, oh) == (x, y, bw, bh):
                continue
            ix = max(0.0, min(x + bw, ox + ow) - max(x, ox))
            iy = max(0.0, min(y + bh, oy + oh) - max(y, oy))
            covered = max(covered, ix * iy / (bw * bh))
        if covered < 0.2 and a["area"] / (bw * bh) > 0.3:
            keep.append(a)
    return keep


def load_sprites(ann_json: Path, images: Path, min_side: int = 40) -> tuple[list[Sprite], list[Path]]:
    """Every cut-out-able object of a COCO split, and the split's empty scenes (images without a
    single non-crowd annotation), both in file order."""
    coco = json.loads(Path(ann_json).read_text())
    cat_index = {c["id"]: k for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sprites, empty = [], []
    for im in sorted(coco["images"], key=lambda i: i["file_name"]):
        anns = by_image.get(im["id"], [])
        if not any(not a["iscrowd"] for a in anns):
            empty.append(Path(images) / im["file_name"])
            continue
        picked = _whole_objects(anns, im["width"], im["height"], min_side)
        photo = cv2.imread(str(Path(images) / im["file_name"])) if picked else None
        for a in picked:
            x, y, bw, bh = (int(round(v)) for v in a["bbox"])
            mask = _ann_mask(a, im["height"], im["width"])[y:y + bh, x:x + bw]
            sprites.append(Sprite(photo[y:y + bh, x:x + bw].copy(), mask, cat_index[a["category_id"]],
                                  f"{im['file_name']}#{a['id']}"))
    return sprites, empty


def _background(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The scene scaled to cover (h, w) and centre-cropped."""
    img = cv2.imread(str(path))
    h, w = size
    s = max(h / img.shape[0], w / img.shape[1])
    size = (max(w, round(img.shape[1] * s)), max(h, round(img.shape[0] * s)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w].copy()


def _scaled(sprite: Sprite, height: float, max_w: int) -> Sprite:
    s = min(height / sprite.image.shape[0], max_w / sprite.image.shape[1])
    w, h = max(8, round(sprite.image.shape[1] * s)), max(8, round(sprite.image.shape[0] * s))
    img = cv2.resize(sprite.image, (w, h), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(sprite.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return replace(sprite, image=img, mask=mask)


def _pick_sprites(spec: SequenceSpec, pool: list[Sprite], rng: np.random.Generator) -> list[Sprite]:
    n = spec.objects + spec.arrivals
    if spec.one_class:
        classes, counts = np.unique([s.cls for s in pool], return_counts=True)
        pool = [s for s in pool if s.cls == classes[np.argmax(counts)]]
    if not pool:
        raise ValueError(f"sequence {spec.name}: the COCO source has no object large enough to cut out")
    idx = rng.choice(len(pool), size=n, replace=len(pool) < n)
    return [_scaled(pool[i], rng.uniform(*spec.height), spec.size[1] // 3) for i in idx]


def _velocity(rng: np.random.Generator, speed: tuple[float, float]) -> tuple[float, float]:
    # directions away from the axes, so every object crosses the frame both ways
    angle = rng.uniform(0.15, np.pi / 2 - 0.15) + rng.integers(4) * np.pi / 2
    v = rng.uniform(*speed)
    return v * np.cos(angle), v * np.sin(angle)


def _movers(spec: SequenceSpec, sprites: list[Sprite], rng: np.random.Generator) -> list[Mover]:
    h, w = spec.size
    movers = []
    leaving = set(rng.choice(spec.objects, size=min(spec.departures, spec.objects), replace=False).tolist())
    for k, sp in enumerate(sprites):
        sh, sw = sp.image.shape[:2]
        vx, vy = _velocity(rng, spec.speed)
        end = int(rng.integers(spec.frames // 2, spec.frames * 3 // 4)) if k in leaving else spec.frames
        if k < spec.objects:
            m = Mover(sp, rng.uniform(0, w - sw), rng.uniform(0, h - sh), vx, vy, 0, end, inside=True)
        else:  # enter through a side edge, moving inwards
            left = bool(rng.integers(2))
            x = -sw + 1.0 if left else w - 1.0
            m = Mover(sp, x, rng.uniform(0, h - sh), abs(vx) if left else -abs(vx), vy,
                      int(rng.integers(spec.frames // 8, spec.frames * 5 // 8)), spec.frames)
        movers.append(m)
    for c in range(min(spec.crossings, spec.objects // 2)):
        meet = int(rng.integers(spec.frames // 5, spec.frames * 4 // 5))
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        for m in movers[2 * c:2 * c + 2]:
            _send_to(m, cx, cy, meet, w, h)
    order = rng.permutation(len(movers))  # ids in the GT do not reveal the creation order
    for tid, k in enumerate(order, 1):
        movers[k].track_id = tid
    return movers


def _send_to(m: Mover, cx: float, cy: float, frame: int, w: int, h: int) -> None:
    """Place m so that its centre is at (cx, cy) on `frame`: run its path backwards from there
    (bounces are their own reverse)."""
    sh, sw = m.sprite.image.shape[:2]
    back = Mover(m.sprite, cx - sw / 2, cy - sh / 2, -m.vx, -m.vy, 0, frame + 1, inside=True)
    for t in range(frame):
        _step(back, t, w, h)
    m.x, m.y, m.vx, m.vy = back.x, back.y, -back.vx, -back.vy


def _step(m: Mover, t: int, w: int, h: int) -> None:
    """Advance one frame; bounce off the edges while the object is meant to stay."""
    if t < m.start:
        return
    m.x, m.y = m.x + m.vx, m.y + m.vy
    sh, sw = m.sprite.image.shape[:2]
    if t >= m.end:
        return
    if not m.inside:  # entering through a side: no bounce off that side until fully in
        m.inside = 0 <= m.x and m.x + sw <= w
    elif m.x < 0 or m.x + sw > w:
        m.vx = -m.vx
        m.x = -m.x if m.x < 0 else 2 * (w - sw) - m.x
    if m.y < 0 or m.y + sh > h:
        m.vy = -m.vy
        m.y = -m.y if m.y < 0 else 2 * (h - sh) - m.y


def _paste(frame: np.ndarray, owner: np.ndarray, m: Mover, k: int) -> int:
    """Draw m's sprite at its rounded position (clipped to the frame) and mark its pixels in
    `owner` with k; returns the number of mask pixels inside the frame."""
    h, w = frame.shape[:2]
    sh, sw = m.sprite.image.shape[:2]
    x0, y0 = int(round(m.x)), int(round(m.y))
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + sw, w), min(y0 + sh, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return 0
    sub = m.sprite.mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    frame[fy0:fy1, fx0:fx1][sub] = m.sprite.image[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0][sub]
    owner[fy0:fy1, fx0:fx1][sub] = k
    return int(sub.sum())


def _gt_row(t: int, m: Mover, k: int, owner: np.ndarray, in_frame: int) -> tuple | None:
    """The MOT row of mover k in frame t (box clipped to the frame), or None when out of view."""
    h, w = owner.shape
    sh, sw = m.sprite.image.shape[:2]
    x0, y0 = int(round(m.x)), int(round(m.y))
    x1, y1, x2, y2 = max(x0, 0), max(y0, 0), min(x0 + sw, w), min(y0 + sh, h)
    if in_frame == 0 or x2 <= x1 or y2 <= y1:
        return None
    visible = int((owner[y1:y2, x1:x2] == k).sum())
    return (t + 1, m.track_id, x1, y1, x2 - x1, y2 - y1, m.sprite.cls, visible / m.sprite.mask.sum())


def render(spec: SequenceSpec, sprites: list[Sprite], scenes: list[Path]) -> Sequence:
    """Draw the sequence that `spec.seed` picks from these objects and scenes."""
    if not scenes:
        raise ValueError(f"sequence {spec.name}: the COCO source has no empty scene to use as background")
    rng = np.random.default_rng(spec.seed)
    background = _background(scenes[int(rng.integers(len(scenes)))], spec.size)
    movers = _movers(spec, _pick_sprites(spec, sprites, rng), rng)
    depth = list(rng.permutation(len(movers)))  # drawing order: later is nearer
    h, w = spec.size
    frames, gt = [], []
    for t in range(spec.frames):
        frame, owner = background.copy(), np.full((h, w), -1, np.int32)
        counts = {}
        for k in depth:
            if t >= movers[k].start:
                counts[k] = _paste(frame, owner, movers[k], k)
        rows = [_gt_row(t, movers[k], k, owner, n) for k, n in counts.items()]
        gt += sorted(r for r in rows if r is not None)
        frames.append(frame)
        for m in movers:
            _step(m, t, w, h)
    return Sequence(spec, frames, gt, [m.sprite.source for m in sorted(movers, key=lambda m: m.track_id)])


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """mp4 (mp4v), written beside and renamed into place so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write mp4 video here")
    for f in frames:
        writer.write(f)
    writer.release()
    tmp.replace(path)
    return path


def gt_lines(gt: list[tuple]) -> str:
    return "".join(f"{f},{i},{x},{y},{w},{h},1,{c},{v:.4f}\n" for f, i, x, y, w, h, c, v in gt)


def write_sequence(seq: Sequence, out_dir: Path) -> Path:
    """out_dir/NAME/{NAME.mp4, gt/gt.txt, seqinfo.ini, sources.txt (line k: the object of id k)};
    returns the sequence folder."""
    spec = seq.spec
    folder = Path(out_dir) / spec.name
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    write_video(seq.frames, folder / f"{spec.name}.mp4", spec.fps)
    atomic_write_text(folder / "gt" / "gt.txt", gt_lines(seq.gt))
    atomic_write_text(folder / "seqinfo.ini", "[Sequence]\n" + "".join(f"{k}={v}\n" for k, v in (
        ("name", spec.name), ("frameRate", spec.fps), ("seqLength", spec.frames), ("imWidth", spec.size[1]),
        ("imHeight", spec.size[0]), ("seed", spec.seed))))
    atomic_write_text(folder / "sources.txt", "".join(f"{s}\n" for s in seq.sources))
    return folder


def generate(specs: list[SequenceSpec], out_dir: Path, ann_json: Path, images: Path) -> list[Path]:
    sprites, scenes = load_sprites(ann_json, images)
    return [write_sequence(render(s, sprites, scenes), out_dir) for s in specs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write the sequences into")
    p.add_argument("--data", nargs=2, metavar=("ANN_JSON", "IMAGES_DIR"), default=None,
                   help="COCO instances JSON and its images (default: ../shared coco128, else coco-mini)")
    p.add_argument("--names", default=",".join(SEQUENCES), help=f"comma-separated, of {', '.join(SEQUENCES)}")
    p.add_argument("--seed-offset", type=int, default=0, help="added to every seed: new sequences of the same kinds")
    args = p.parse_args(argv)
    unknown = [n for n in args.names.split(",") if n not in SEQUENCES]
    if unknown:
        p.error(f"--names: unknown sequence {unknown[0]!r} (known: {', '.join(SEQUENCES)})")
    shared = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data"))
    ann, images = (Path(v) for v in args.data) if args.data else find_coco_source(shared)
    specs = [replace(SEQUENCES[n], seed=SEQUENCES[n].seed + args.seed_offset) for n in args.names.split(",")]
    for folder in generate(specs, Path(args.out), ann, images):
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
