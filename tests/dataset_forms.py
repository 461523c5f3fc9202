"""Dataset YAMLs in the official tools' forms, built in a tmp folder over the real images and labels
of shared/data/dev/coco128_instances (images symlinked, label files symlinked or rewritten)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

# coco8(-seg)'s val images; coco128 holds the same images with the same polygon labels
VAL4 = ["000000000036", "000000000042", "000000000049", "000000000061"]
TRAIN2 = ["000000000009", "000000000025"]


def coco128_names(shared_data: Path) -> list[str]:
    names = yaml.safe_load((shared_data / "dev/coco128_instances/coco128-seg.yaml").read_text())["names"]
    return [names[i] for i in range(len(names))]


def _src(shared_data: Path, stem: str) -> tuple[Path, Path]:
    dev = shared_data / "dev/coco128_instances"
    return dev / f"images/train2017/{stem}.jpg", dev / f"labels/train2017/{stem}.txt"


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def place(shared_data: Path, stems: list[str], images: Path, labels: Path | None, boxes_every: int = 0) -> None:
    """Each image linked into `images`, its label into `labels` (boxes_every=k: every k-th polygon
    line rewritten as the `cls cx cy w h` box around it, so box and polygon lines mix)."""
    for stem in stems:
        img, lab = _src(shared_data, stem)
        link(img, images / img.name)
        if labels is None:
            continue
        if not boxes_every:
            link(lab, labels / lab.name)
            continue
        lines = lab.read_text().splitlines()
        out = [as_box(ln) if k % boxes_every == 0 else ln for k, ln in enumerate(lines)]
        labels.mkdir(parents=True, exist_ok=True)
        (labels / lab.name).write_text("\n".join(out) + "\n")


def as_box(line: str) -> str:
    cls, *vals = line.split()
    xs, ys = [float(v) for v in vals[0::2]], [float(v) for v in vals[1::2]]
    x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
    return f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"


def write_yaml(path: Path, body: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def yolov7_form(shared_data: Path, tmp: Path) -> tuple[Path, Path]:
    """YOLOv7's data/coco.yaml layout: list files of ./images/... lines, nc, names list, download;
    paths relative to the folder YOLOv7 runs from. Returns (yaml, that folder)."""
    repo = tmp / "yolov7"
    for split, stems in (("train2017", TRAIN2), ("val2017", VAL4)):
        place(shared_data, stems, repo / f"coco/images/{split}", repo / f"coco/labels/{split}")
        (repo / f"coco/{split}.txt").write_text("".join(f"./images/{split}/{s}.jpg\n" for s in stems))
    body = {"download": "bash ./scripts/get_coco.sh", "train": "./coco/train2017.txt", "val": "./coco/val2017.txt",
            "nc": 80, "names": coco128_names(shared_data)}
    return write_yaml(repo / "data/coco.yaml", body), repo


def folders_form(shared_data: Path, tmp: Path) -> Path:
    """`val` a list mixing a folder and a list file (lines not ./-prefixed), `train` a list of
    folders, `path` relative to the YAML."""
    root = tmp / "mixed"
    place(shared_data, VAL4[:2], root / "images/a", root / "labels/a")
    place(shared_data, VAL4[2:], root / "images/b", root / "labels/b")
    place(shared_data, TRAIN2, root / "images/c", root / "labels/c")
    (root / "lists").mkdir()
    (root / "lists/b.txt").write_text("".join(f"../images/b/{s}.jpg\n" for s in VAL4[2:]))
    body = {"path": "mixed", "train": ["images/a", "images/c"], "val": ["images/a", "lists/b.txt"],
            "names": coco128_names(shared_data)}
    return write_yaml(tmp / "mixed.yaml", body)


def roboflow_form(shared_data: Path, tmp: Path) -> Path:
    """A Roboflow export: data.yaml beside train/ valid/ test/, entries `../train/images`, a
    roboflow block; box and polygon lines mixed in the labels."""
    root = tmp / "roboflow"
    place(shared_data, TRAIN2, root / "train/images", root / "train/labels", boxes_every=2)
    place(shared_data, VAL4, root / "valid/images", root / "valid/labels", boxes_every=2)
    place(shared_data, TRAIN2[:1], root / "test/images", None)
    body = {"train": "../train/images", "val": "../valid/images", "test": "../test/images", "nc": 80,
            "names": coco128_names(shared_data),
            "roboflow": {"workspace": "w", "project": "coco", "version": 1, "license": "CC BY 4.0",
                         "url": "https://universe.roboflow.com/w/coco/dataset/1"}}
    return write_yaml(root / "data.yaml", body)


def _image_dir(shared_data: Path, tmp: Path) -> Path:
    place(shared_data, VAL4[:1], tmp / "images", tmp / "labels")
    return tmp / "images"


def _list_file(shared_data: Path, tmp: Path, lines: list[str]) -> Path:
    _image_dir(shared_data, tmp)
    (tmp / "val.txt").write_text("\n".join(lines) + "\n")
    return tmp / "val.txt"


HOSTILE = [  # (what the YAML says, the one line expected; TMP is the tmp folder)
    ({"path": "TMP", "val": "images/nope", "names": ["a"]},
     "data.yaml: 'val': images/nope not found (looked at TMP/images/nope)"),
    ({"path": "TMP", "val": "val.txt", "names": ["a"], "_list": ["./images/000000000036.jpg", "images/gone.jpg"]},
     "TMP/val.txt:2: image not found: images/gone.jpg (looked at TMP/images/gone.jpg)"),
    ({"path": "TMP", "val": "val.txt", "names": ["a"], "_list": ["notes.md"]},
     "TMP/val.txt:1: 'notes.md' is not an image path"),
    ({"path": "TMP", "val": "images", "nc": 3, "names": ["a", "b"]}, "data.yaml: 'nc' is 3 but there are 2 names"),
    ({"path": "TMP", "val": "images", "names": {0: "a", 2: "b"}},
     "data.yaml: 'names' index 2 is out of range: 2 names take the indices 0..1"),
    ({"path": "TMP", "val": "images", "names": {"car": 0}}, "data.yaml: 'names' key 'car' is not a class index"),
    ({"path": "TMP", "val": "images", "names": ["a", None]}, "data.yaml: 'names' entry 1 must be a name, got None"),
    ({"path": "TMP", "val": "images"}, "data.yaml: needs 'names' (a list, or index: name) or at least 'nc'"),
    ({"path": "TMP", "val": "images", "nc": "many"}, "data.yaml: 'nc' must be a positive integer, got 'many'"),
    ({"path": "TMP", "vall": "images", "names": ["a"]}, "data.yaml: unknown key(s) ['vall']"),
    ({"path": "TMP", "format": "coco", "val": "images"},
     "data.yaml: 'val' must be a mapping with 'images' and 'annotations'"),
    ({"path": "TMP", "val": [7], "names": ["a"]}, "data.yaml: 'val' entries must be paths"),
    ({"path": "TMP", "val": [], "names": ["a"]}, "data.yaml: 'val' is an empty list"),
    ({"path": "TMP", "val": "images", "names": ["a"], "channels": 1}, "data.yaml: 'channels' is 1: only 3-channel"),
    ({"path": "TMP/nope", "val": "images", "names": ["a"]}, "data.yaml: 'path' folder not found: TMP/nope"),
]


def hostile_yaml(shared_data: Path, tmp: Path, body: dict) -> Path:
    body = json.loads(json.dumps(body).replace("TMP", str(tmp)))
    lines = body.pop("_list", None)
    if lines:
        _list_file(shared_data, tmp, lines)
    else:
        _image_dir(shared_data, tmp)
    return write_yaml(tmp / "data.yaml", body)
