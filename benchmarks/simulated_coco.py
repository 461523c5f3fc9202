"""A COCO-sized dataset made from a small real one: the source's images repeated as symlinks under
new names, its annotations copied under new image and annotation ids, in both label forms (one
COCO instances JSON, and YOLO txt files beside the images), so that label indexing, start-up and
loader memory can be measured at full scale without downloading COCO.

    make_simulated(source, n_images, out) -> SimulatedSet

The JSON is written record by record (never held whole), with `categories` last, as in the
official instances_train2017.json. A finished set is marked by its manifest and reused when the
same source and size are asked for again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "simulated.json"


@dataclass(frozen=True)
class Source:
    annotations: Path   # a COCO instances JSON
    images: Path        # the folder its file_names are in


@dataclass(frozen=True)
class SimulatedSet:
    root: Path
    images: Path        # images/train2017 (symlinks)
    labels: Path        # labels/train2017 (YOLO txt)
    annotations: Path   # annotations/instances_train2017.json
    coco_yaml: Path     # our dataset YAML, COCO form
    yolo_yaml: Path     # our dataset YAML, YOLO form
    names_json: Path    # the class names (for the reference's label cache)
    n_images: int
    n_instances: int    # non-crowd, as trained on


def default_source() -> Source:
    """coco128 from ../shared/data (GRADPATH_SHARED_DATA) when present, else the bundled coco-mini."""
    shared = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data"))
    c128 = shared / "dev/coco128_instances"
    if (c128 / "annotations/instances_train2017.json").is_file():
        return Source(c128 / "annotations/instances_train2017.json", c128 / "images/train2017")
    mini = ROOT / "datasets/coco-mini"
    return Source(mini / "annotations/instances_train.json", mini / "images")


def yolo_lines(anns: list[dict], width: int, height: int, cat_index: dict[int, int]) -> str:
    """One image's YOLO-seg label text: `class x1 y1 x2 y2 ...` normalised; crowd regions left out;
    the parts of a several-polygon instance joined into one ring; a box outline without a polygon."""
    from data.datasets import join_polygons

    rows = []
    for a in anns:
        if a.get("iscrowd", 0):
            continue
        seg = a.get("segmentation")
        ring = join_polygons(seg) if isinstance(seg, list) else None
        if ring is None:
            x, y, w, h = a["bbox"]
            ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
        pts = " ".join(f"{px / width:.6f} {py / height:.6f}" for px, py in ring)
        rows.append(f"{cat_index[a['category_id']]} {pts}")
    return "\n".join(rows) + ("\n" if rows else "")


def write_repeated_json(path: Path, src: dict, n_images: int) -> int:
    """The repeated instances JSON, streamed; returns the non-crowd instance count."""
    images = src["images"]
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
    for a in src["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    tmp = path.with_suffix(".tmp")
    n_inst, ann_id = 0, 0
    with tmp.open("w") as f:
        f.write('{"info": %s, "licenses": %s, "images": [' % (json.dumps(src.get("info", {})),
                                                              json.dumps(src.get("licenses", []))))
        for k in range(n_images):
            im = images[k % len(images)]
            f.write(("," if k else "") + json.dumps({**im, "id": k + 1, "file_name": _name(k, im)}))
        f.write('], "annotations": [')
        for k in range(n_images):
            for a in by_image[images[k % len(images)]["id"]]:
                ann_id += 1
                f.write(("," if ann_id > 1 else "") + json.dumps({**a, "id": ann_id, "image_id": k + 1}))
                n_inst += not a.get("iscrowd", 0)
        f.write('], "categories": %s}' % json.dumps(src["categories"]))
    tmp.replace(path)
    return n_inst


def _name(k: int, im: dict) -> str:
    return f"{k + 1:012d}{Path(im['file_name']).suffix}"


def _write_images_and_labels(out: SimulatedSet, src: dict, source: Source) -> None:
    cats = sorted(c["id"] for c in src["categories"])
    cat_index = {c: i for i, c in enumerate(cats)}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in src["images"]}
    for a in src["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    texts = [yolo_lines(by_image[im["id"]], im["width"], im["height"], cat_index) for im in src["images"]]
    targets = [(source.images / im["file_name"]).resolve() for im in src["images"]]
    for k in range(out.n_images):
        j = k % len(src["images"])
        name = _name(k, src["images"][j])
        link = out.images / name
        if not link.is_symlink():
            link.symlink_to(targets[j])
        (out.labels / name).with_suffix(".txt").write_text(texts[j])


def _paths(out: Path, n: int, n_inst: int) -> SimulatedSet:
    return SimulatedSet(out, out / "images/train2017", out / "labels/train2017",
                        out / "annotations/instances_train2017.json", out / "coco.yaml", out / "yolo.yaml",
                        out / "names.json", n, n_inst)


def make_simulated(source: Source, n_images: int, out: Path) -> SimulatedSet:
    """The set of `n_images` in `out`, made now or reused from an earlier run with the same inputs."""
    import yaml

    out = Path(out).resolve()
    key = {"source": str(source.annotations.resolve()), "images": n_images}
    manifest = out / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("key") == key:
            return _paths(out, n_images, saved["instances"])
    src = json.loads(source.annotations.read_text())
    s = _paths(out, n_images, 0)
    for d in (s.images, s.labels, s.annotations.parent):
        d.mkdir(parents=True, exist_ok=True)
    n_inst = write_repeated_json(s.annotations, src, n_images)
    _write_images_and_labels(s, src, source)
    names = [c["name"] for c in sorted(src["categories"], key=lambda c: c["id"])]
    s.names_json.write_text(json.dumps(names))
    val = {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"}
    s.coco_yaml.write_text(yaml.safe_dump({"format": "coco", "path": str(out), "train": val}))
    s.yolo_yaml.write_text(yaml.safe_dump({"format": "yolo", "path": str(out), "names": names,
                                           "train": {"images": "images/train2017", "labels": "labels/train2017"}}))
    manifest.write_text(json.dumps({"key": key, "instances": n_inst}))
    return _paths(out, n_images, n_inst)
