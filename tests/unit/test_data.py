"""Data: COCO vs YOLO labels, augmentations keep boxes = mask bounds, letterbox inverse, the
label index cache, bad input counted and skipped, crowd kept out of training targets."""
from __future__ import annotations

import itertools
import json
import random
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from data.augment import (Tile, copy_paste, filter_instances, flip, letterbox, min_area_ratio, mixup, mosaic4,
                          random_perspective, warp_image)
from data.config import load_data_config
from data.datasets import load_index
from data.images import ImageReader, resized_shape
from data.label_index import LabelIndex
from data.loader import EpochBatchSampler, build_dataloader, collate, to_tensors
from utils.errors import ConfigError
from engine.config import Hyp
from utils.geometry import input_to_orig
from utils.masks import polygons_to_mask
from utils.structures import Sample

MINI = ROOT / "cfg/data/coco-mini.yaml"


def _yaml(tmp_path: Path, body: dict) -> Path:
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


def _check_boxes_match_masks(sample, name, tol=2.0):
    h, w = sample.image.shape[:2]
    for box, seg in zip(sample.boxes, sample.segments):
        m = polygons_to_mask([seg], (h, w))
        if m.sum() < 20:
            continue
        ys, xs = np.nonzero(m)
        got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.abs(got - box).max() <= tol + 1, (name, got.tolist(), box.tolist())


def test_coco_and_yolo_give_same_boxes(shared_data, tmp_path):
    dev = shared_data / "dev/coco_dev32"
    coco = load_data_config(_yaml(tmp_path, {"format": "coco", "path": str(dev),
                                             "val": {"images": "images", "annotations": "annotations/instances_val.json"}}))
    tmp2 = tmp_path / "y"
    tmp2.mkdir()
    shutil.copytree(dev / "labels", tmp2 / "labels")
    names = yaml.safe_load((dev / "coco_dev32-seg.yaml").read_text())["names"]
    val_imgs = [(dev / line.strip()).resolve() for line in (dev / "val.txt").read_text().splitlines() if line.strip()]
    (tmp2 / "val.txt").write_text("\n".join(str(p) for p in val_imgs))
    yolo = load_data_config(_yaml(tmp2, {"format": "yolo", "path": str(tmp2), "names": names,
                                         "val": {"images": str(dev / "images"), "labels": "labels", "list": "val.txt"}}))
    ci, yi = load_index(coco, "val"), load_index(yolo, "val")
    by_file = {Path(f).name: k for k, f in enumerate(yi.files)}
    assert len(ci) == len(yi) == 8
    for k, f in enumerate(ci.files):
        cb, cc, _ = ci.instances(k)
        yb, yc, _ = yi.instances(by_file[Path(f).name])
        order_c, order_y = np.lexsort(cb.T[::-1]), np.lexsort(yb.T[::-1])
        assert (cc[order_c] == yc[order_y]).all()
        assert np.abs(cb[order_c] - yb[order_y]).max() < 1.5  # polygon extent vs JSON bbox, rounding


@pytest.fixture(scope="module")
def train_set():
    _, ds = build_dataloader(load_data_config(MINI), "train", 256, 4, Hyp.load().aug)
    return ds


def test_every_augmentation_keeps_boxes_on_masks(train_set):
    random.seed(1)
    np.random.seed(1)
    hyp = Hyp.load().replace(degrees=10.0, shear=3.0, perspective=0.0005).aug
    samples = [train_set.load_sample(i) for i in range(4)]
    ops = {
        "perspective": lambda: random_perspective(samples[0], (256, 256), 10, 0.1, 0.5, 3, 0.0005),
        "mosaic": lambda: mosaic4(samples, 256, hyp),
        "flip_lr": lambda: flip(samples[1], True),
        "flip_ud": lambda: flip(samples[2], False),
        "copy_paste": lambda: copy_paste(samples[3], 1.0),
        "mixup": lambda: mixup(mosaic4(samples, 256, hyp), mosaic4(samples[::-1], 256, hyp)),
    }
    for name, op in ops.items():
        for _ in range(3):
            s = op()
            assert len(s.boxes) == len(s.classes) == len(s.segments), name
            _check_boxes_match_masks(s, name)


def test_batches_follow_the_contract(train_set):
    loader, _ = build_dataloader(load_data_config(MINI), "train", 256, 4, Hyp.load().aug, shuffle=True)
    b = next(iter(loader))
    assert b.images.dtype.is_floating_point is False and tuple(b.images.shape) == (4, 3, 256, 256)
    assert b.masks.shape == (len(b.classes), 64, 64) and b.boxes.shape == (len(b.classes), 4)
    assert set(b.batch_idx.tolist()) <= {0, 1, 2, 3} and int(b.classes.max()) < 80
    for k in range(len(b.classes)):  # each mask lies inside its box (at 1/4 resolution)
        ys, xs = np.nonzero(b.masks[k].numpy())
        if len(xs):
            x1, y1, x2, y2 = (b.boxes[k] / 4).tolist()
            assert xs.min() >= x1 - 1.5 and xs.max() <= x2 + 0.5 and ys.min() >= y1 - 1.5 and ys.max() <= y2 + 0.5


def test_letterbox_and_its_inverse_put_boxes_back_on_the_image():
    """letterbox's ratio_pad and utils.geometry.input_to_orig (the path every prediction takes
    back to the original image) against hand-computed values, and on a drawn rectangle: found in
    the letterboxed image and mapped back, it lands where it was drawn."""
    img = np.zeros((427, 640, 3), np.uint8)
    img[100:301, 40:441] = 255  # the box [40, 100, 441, 301] in pixel-edge coordinates
    out, rp = letterbox(img, 320)
    # 640 -> 320: scale 0.5; 427 rows -> round(213.5) = 214 (ratio 214/427), 106 rows of padding: 53 each side
    assert out.shape == (320, 320, 3) and rp == ((0.5, 214 / 427), (0.0, 53.0))
    boxes = torch.tensor([[10.0, 60.0, 110.0, 160.0], [-5.0, 0.0, 330.0, 400.0]])
    back = input_to_orig(boxes, rp, (427, 640))
    # x / 0.5; (y - 53) * 427 / 214; the second box reaches into the padding: clipped to 640 x 427
    assert torch.allclose(back, torch.tensor([[20.0, 7 * 427 / 214, 220.0, 213.5], [0.0, 0.0, 640.0, 427.0]]))
    ys, xs = np.nonzero(out[..., 0] > 127)
    found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    drawn = torch.tensor([[40.0, 100.0, 441.0, 301.0]])
    assert (input_to_orig(found, rp, (427, 640)) - drawn).abs().max() <= 2.0  # 1 input pixel = 2 here


@pytest.mark.parametrize("hw, new_shape, kw, out_hw, ratio, pad, top_left", [
    ((427, 640), 640, {"auto": True}, (448, 640), (1.0, 1.0), (0.0, 10.5), (10, 0)),  # odd: 10 above, 11 below
    ((640, 427), 640, {}, (640, 640), (1.0, 1.0), (106.5, 0.0), (0, 106)),
    ((346, 500), 640, {"auto": True}, (448, 640), (640 / 500, 443 / 346), (0.0, 2.5), (2, 0)),  # 442.88 -> 443
    ((960, 1280), 640, {"auto": True}, (480, 640), (0.5, 0.5), (0.0, 0.0), (0, 0)),
    ((100, 640), 640, {"auto": True}, (128, 640), (1.0, 1.0), (0.0, 14.0), (14, 0)),
    ((427, 640), (672, 672), {"scaleup": False}, (672, 672), (1.0, 1.0), (16.0, 122.5), (122, 16)),  # a val batch
])
def test_letterbox_shapes_and_padding(hw, new_shape, kw, out_hw, ratio, pad, top_left):
    """Hand-computed shapes; the pad reported is half the padding (a float, as the official
    letterbox reports it), the image starting at round(pad - 0.1)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    out, rp = letterbox(img, new_shape, **kw)
    assert out.shape[:2] == out_hw and np.allclose(rp[0], ratio) and rp[1] == pad
    resized = (round(hw[0] * ratio[1]), round(hw[1] * ratio[0]))
    top, left = top_left
    inner = out[top:top + resized[0], left:left + resized[1]]
    expected = img if resized == hw else cv2.resize(img, resized[::-1], interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(inner, expected)  # bilinear even when shrinking, as the official letterbox
    grey = np.ones(out.shape[:2], bool)
    grey[top:top + resized[0], left:left + resized[1]] = False
    assert (out[grey] == 114).all()


def test_resized_shape_rounds_up_exactly():
    """The short side is rounded up, as the official loaders do, in integers: no float overshoot."""
    assert resized_shape(336, 500, 640) == (431, 640)  # 430.08 -> 431
    assert resized_shape(640, 427, 640) == (640, 427)
    assert resized_shape(87, 116, 640) == (480, 640)  # exactly 480; math.ceil(87 * (640 / 116)) gives 481
    assert resized_shape(147, 100, 320) == (320, 218)  # math.ceil(147 * (320 / 147)) gives 321
    assert resized_shape(960, 1280, 640) == (480, 640)


def test_val_rect_batches_and_metadata():
    """Validation batches: sorted by aspect ratio, each the smallest stride multiple that fits plus
    half a stride (as the official evaluators pad), every image centred in it."""
    loader, ds = build_dataloader(load_data_config(MINI), "val", 320, 4, rect=True)
    # h/w sorted: 0.667 0.692 0.741 0.747 | 0.75 0.75 1.333 1.502 -> (ceil(7.47 + 0.5), ceil(10.5)) x 32
    # for the first batch; the second holds both orientations, so it is square
    batches = list(loader)
    assert [tuple(b.images.shape[-2:]) for b in batches] == [(256, 352), (352, 352)]
    b = batches[0]
    assert b.orig_shapes[0] == (427, 640)  # resized to (214, 320): 213.5 rounded up
    assert b.ratio_pads[0] == ((320 / 640, 214 / 427), (16.0, 21.0))
    img = b.images[0]
    assert (img[:, :21] == 114).all() and (img[:, 235:] == 114).all() and (img[:, :, :16] == 114).all()
    assert (img[:, 21:235, 16:336] != 114).any(0).float().mean() > 0.9


def test_rect_batch_shapes_by_split():
    """Training --rect batches are not padded beyond the stride multiple; validation ones are."""
    train = build_dataloader(load_data_config(MINI), "val", 320, 4, Hyp.load().aug, rect=True)[1]
    val = build_dataloader(load_data_config(MINI), "val", 320, 4, rect=True)[1]
    assert {tuple(s) for s in train.batch_shapes} == {(256, 320), (320, 320)}
    assert {tuple(s) for s in val.batch_shapes} == {(256, 352), (352, 352)}


def test_crowd_kept_out_of_targets_but_in_ann_file():
    index = load_index(load_data_config(MINI), "val")
    data = json.loads((ROOT / "datasets/coco-mini/annotations/instances_val.json").read_text())
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert crowd > 0 and index.counts["crowd"] == crowd
    assert len(index.classes) == len(data["annotations"]) - crowd


def _broken_copy(tmp_path: Path) -> Path:
    """coco-mini val with a truncated JPEG, a missing image and bad annotations."""
    src = ROOT / "datasets/coco-mini"
    data = json.loads((src / "annotations/instances_val.json").read_text())
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for im in data["images"]:
        shutil.copy(src / "images" / im["file_name"], img_dir)
    first, second = data["images"][0], data["images"][1]
    raw = (img_dir / first["file_name"]).read_bytes()
    (img_dir / first["file_name"]).write_bytes(raw[: len(raw) // 2])  # truncated
    (img_dir / second["file_name"]).unlink()  # missing
    anns = data["annotations"]
    anns.append({**anns[0], "id": 10**12, "category_id": 9999})              # unknown category
    anns.append({**anns[0], "id": 10**12 + 1, "image_id": 42})                # unknown image
    anns.append({**anns[0], "id": 10**12 + 2, "bbox": [5, 5, 0, 10]})         # zero width
    anns.append({**anns[0], "id": 10**12 + 3})                                # duplicate
    kept = next(a for a in anns if a["image_id"] not in (first["id"], second["id"]))
    anns.append({**kept, "id": 10**12 + 4, "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 30]]})  # 2 points
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return _yaml(tmp_path, {"format": "coco", "path": str(tmp_path),
                            "val": {"images": "images", "annotations": "ann.json"}})


def test_bad_input_is_counted_and_skipped(tmp_path, caplog):
    cfg = load_data_config(_broken_copy(tmp_path))
    with caplog.at_level("WARNING"):
        index = load_index(cfg, "val")
    c = index.counts
    assert (c["corrupt"], c["missing"], c["bad_labels"], c["duplicates"]) == (1, 1, 3, 1)
    assert c["fixed"] >= 1 and f"annotation id {10**12 + 4}: polygon" in caplog.text and "polygon with fewer than 3 points" in caplog.text
    assert c["images"] == 6 and "corrupt 1" in index.summary()
    loader, _ = build_dataloader(cfg, "val", 128, 4, rect=True)
    assert sum(len(b) for b in loader) == 6


def test_index_is_rebuilt_when_labels_change(tmp_path):
    path = _broken_copy(tmp_path)
    cfg = load_data_config(path)
    first = load_index(cfg, "val")
    cache = tmp_path / "ann.index.npz"
    assert cache.is_file()
    assert load_index(cfg, "val").counts == first.counts  # from the cache
    data = json.loads((tmp_path / "ann.json").read_text())
    data["annotations"] = data["annotations"][:10]
    time.sleep(0.01)
    (tmp_path / "ann.json").write_text(json.dumps(data))
    assert len(load_index(cfg, "val").classes) < len(first.classes)


def test_yolo_label_errors_name_file_and_line(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    shutil.copy(ROOT / "datasets/coco-mini/images/000000000790.jpg", tmp_path / "images/a.jpg")
    (tmp_path / "labels/a.txt").write_text("0 0.5 0.5 0.2 0.2\n99 0.5 0.5 0.1 0.1\n1 0.1 0.1\nx y z w h\n"
                                           "2 nan 0.5 0.1 0.1\n3 0.1 0.1 0.2 0.1 0.2 0.3\n")
    cfg = load_data_config(_yaml(tmp_path, {"format": "yolo", "path": str(tmp_path), "names": ["a", "b", "c", "d"],
                                            "train": {"images": "images", "labels": "labels"}}))
    index = load_index(cfg, "train")
    assert index.classes.tolist() == [0, 3] and index.counts["bad_labels"] == 4
    assert "a.txt:2: class 99 out of range" in caplog.text and "a.txt:3" in caplog.text


@pytest.mark.parametrize("body, message", [
    ({"format": "coco", "path": "TMP", "val": {"images": ".", "annotations": "nope.json"}}, "val.annotations"),
    ({"format": "coco", "path": "TMP", "bogus": 1}, "unknown key"),
    ({"format": "yolo", "path": "TMP", "nc": 3, "names": ["a", "b"], "train": {"images": ".", "labels": "."}},
     "'nc' is 3 but there are 2 names"),
    ({"format": "coco", "path": "/no/such/dir"}, "'path' folder not found"),
])
def test_dataset_yaml_errors(tmp_path, body, message):
    body = json.loads(json.dumps(body).replace("TMP", str(tmp_path)))
    with pytest.raises(ConfigError, match=message):
        load_data_config(_yaml(tmp_path, body))


def test_albumentations_is_photometric_only():
    from data.augment import build_photometric

    assert build_photometric(0.0) is None
    pipe = build_photometric(100.0)  # every op fires
    img = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    out = pipe(img)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)


def _uniform_sample(value: int, hw=(240, 320), image_id=0) -> Sample:
    """A one-colour image whose single instance is the whole image."""
    h, w = hw
    poly = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    return Sample(np.full((h, w, 3), value, np.uint8), np.array([[0, 0, w, h]], np.float32), np.array([1]), [poly],
                  image_id, "x.jpg", hw)


@pytest.mark.parametrize("M", [
    np.array([[0.37, 0, 21.3], [0, 0.37, -7.6], [0, 0, 1]]),     # scale + shift: the resize path
    np.array([[1.6, 0, -90.2], [0, 1.6, 13.9], [0, 0, 1]]),
    np.array([[0.8, 0.05, 10.0], [-0.05, 0.8, 30.0], [0, 0, 1]]),  # rotation: the general warp
])
def test_warp_moves_image_exactly_as_labels(M):
    img = np.zeros((200, 300, 3), np.uint8)
    img[50:120, 80:200] = 255  # pixel-edge rectangle [80,200] x [50,120]
    out, applied = warp_image(img, M, (256, 256))
    corners = np.array([[80, 50, 1], [200, 50, 1], [80, 120, 1], [200, 120, 1]], float) @ applied.T
    ys, xs = np.nonzero(out[..., 0] > 127)
    got = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    want = [*corners[:, :2].min(0), *corners[:, :2].max(0)]
    assert np.abs(np.array(got) - np.array(want)).max() <= 1.0, (got, want)
    assert np.abs(applied - M).max() < 0.02 * max(abs(M[0, 2]), 1) + 0.01  # at most a pixel's rounding


def test_mosaic_labels_lie_on_image_pixels():
    """Zoomed-out mosaics show grey beyond the canvas; labels of images cropped at the canvas edge
    must stop there too (every mask pixel is on its image's colour, never on the grey)."""
    hyp = Hyp.load().replace(scale=0.9, degrees=0.0, shear=0.0, perspective=0.0).aug
    random.seed(3)
    checked = 0
    for _ in range(40):
        s = mosaic4([_uniform_sample(v) for v in (40, 90, 160, 220)], 320, hyp)
        for seg in s.segments:
            m = polygons_to_mask([seg], s.image.shape[:2])
            inner = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # skip edge blending
            if inner.sum() > 50:
                assert (s.image[inner][:, 0] != 114).mean() > 0.99
                checked += 1
    assert checked > 40


def test_mosaic_reads_only_the_tiles_it_shows():
    samples = [_uniform_sample(v, image_id=v) for v in (40, 90, 160, 220)]
    hyp = Hyp.load().replace(scale=0.9).aug
    reads = []
    for seed in range(30):
        random.seed(seed)
        full = mosaic4(samples, 320, hyp)
        random.seed(seed)
        tiles = [Tile((240, 320), lambda s=s: reads.append(s.image_id) or s) for s in samples]
        lazy = mosaic4(tiles, 320, hyp)
        assert (lazy.image == full.image).all() and np.allclose(lazy.boxes, full.boxes)
    assert len(reads) < 4 * 30 and reads.count(40) == 30  # some tiles skipped; the first always read


def test_epoch_batch_sampler_splits_ranks_and_reshuffles():
    per_rank = [EpochBatchSampler(10, 2, shuffle=True, seed=5, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in per_rank] == [2, 2, 2]  # ceil(10 / 3) = 4 positions, 2 batches
    keys = [list(itertools.islice(iter(s), 4)) for s in per_rank]  # two epochs each
    for epoch in (0, 1):
        seen = [k for rank in keys for b in rank[2 * epoch:2 * epoch + 2] for k, e in b if e == epoch]
        assert len(seen) == 12 and set(seen) == set(range(10))  # padded by repeats, all covered
    assert per_rank[0].epoch_order(0).tolist() != per_rank[0].epoch_order(1).tolist()
    resumed = EpochBatchSampler(10, 2, shuffle=True, seed=5, rank=0, world_size=3)
    resumed.start_epoch = 1
    assert next(iter(resumed)) == keys[0][2]


def test_close_mosaic_reaches_persistent_workers(train_set, monkeypatch):
    """Mosaic closes at an epoch boundary even though the 2 workers were forked before it."""
    loader, ds = build_dataloader(load_data_config(MINI), "train", 256, 4,
                                  Hyp.load().replace(mosaic=1.0, mixup=0.0).aug, shuffle=True, workers=2)
    marker = _uniform_sample(7, (256, 256), image_id=-1)
    monkeypatch.setattr(ds, "_mosaic", lambda i: marker)
    loader.set_mosaic_epochs(1)
    first = [i for b in loader for i in b.image_ids]
    second = [i for b in loader for i in b.image_ids]
    assert len(first) == len(second) == len(ds)
    assert set(first) == {-1} and -1 not in second


def test_collate_gives_rgb_chw():
    blue = Sample(np.zeros((64, 96, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), [], 1, "a", (64, 96))
    blue.image[..., 0] = 255  # BGR blue
    small = Sample(blue.image[:32].copy(), blue.boxes, blue.classes, [], 2, "b", (32, 96))
    b = collate([to_tensors(blue), to_tensors(small)])
    assert tuple(b.images.shape) == (2, 3, 64, 96)
    assert (b.images[:, 2, :32] == 255).all() and (b.images[:, :2, :32] == 0).all()
    assert (b.images[1, :, 32:] == 114).all()  # padding of the shorter image


def test_hsv_value_gain_scales_grey_and_keeps_it_grey():
    from data.augment import augment_hsv

    grey = np.repeat(np.arange(0, 256, 2, dtype=np.uint8)[None, :, None], 3, 2)  # S = 0: hue/sat do nothing
    np.random.seed(4)
    gain = (np.random.uniform(-1, 1, 3) * [0.015, 0.7, 0.4] + 1)[2]
    np.random.seed(4)
    out = augment_hsv(grey, 0.015, 0.7, 0.4).astype(int)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[0, :, 0] - np.clip(np.arange(0, 256, 2) * gain, 0, 255).astype(int)).max() <= 1
    assert augment_hsv(grey, 0, 0, 0) is grey


def test_mosaic_of_tiny_images_that_the_output_may_miss():
    """Tiles a few pixels wide often lie outside what the perspective keeps: an empty mosaic then,
    not an error."""
    random.seed(0)
    hyp = Hyp.load().replace(scale=0.5, translate=0.3).aug
    sizes = set()
    for _ in range(50):
        s = mosaic4([_uniform_sample(v, (6, 8)) for v in (40, 90, 160, 220)], 320, hyp)
        assert s.image.shape == (320, 320, 3) and len(s.boxes) == len(s.classes) == len(s.segments)
        sizes.add(len(s))
    assert 0 in sizes


def _mini_images(n: int) -> tuple[list[str], np.ndarray]:
    index = load_index(load_data_config(MINI), "train")
    return list(index.files[:n]), index.shapes[:n]


def _no_decoding(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("decoded an image that should have come from the cache")
    monkeypatch.setattr(cv2, "imread", fail)


def test_ram_cache_serves_the_same_images_without_decoding(monkeypatch):
    files, shapes = _mini_images(4)
    for augment in (True, False):  # train and val resize differently
        plain = ImageReader(files, shapes, 200, augment)
        expected = [plain[i] for i in range(4)]
        cached = ImageReader(files, shapes, 200, augment, cache="ram")
        with monkeypatch.context() as m:
            _no_decoding(m)
            for i in range(4):
                assert np.array_equal(cached[i], expected[i])
                assert max(cached[i].shape[:2]) == 200


def test_ram_cache_that_would_not_fit_is_refused(monkeypatch):
    files, shapes = _mini_images(4)
    monkeypatch.setattr("data.images.psutil.virtual_memory", lambda: type("M", (), {"available": 2**20})())
    with pytest.raises(ConfigError, match=r"--cache ram: needs .* GiB but only .* available; use --cache disk"):
        ImageReader(files, shapes, 640, True, cache="ram")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: every local rank holds a copy
    monkeypatch.setattr("data.images.psutil.virtual_memory", lambda: type("M", (), {"available": 4 * 2**20})())
    with pytest.raises(ConfigError, match="x 4 local ranks"):
        ImageReader(files, shapes, 640, True, cache="ram")


def test_disk_cache_is_filled_reused_refreshed_and_repaired(tmp_path, monkeypatch):
    src, shapes = _mini_images(3)
    files = []
    for f in src:
        files.append(tmp_path / Path(f).name)
        shutil.copy(f, files[-1])
    expected = [ImageReader(files, shapes, 160, False)[i] for i in range(3)]
    cache = tmp_path / "cache"
    ImageReader(files, shapes, 160, False, cache="disk", cache_dir=cache)  # filled up front
    assert len(list(cache.glob("*.npy"))) == 3 and not list(cache.glob("*.tmp"))
    reader = ImageReader(files, shapes, 160, False, cache="disk", cache_dir=cache)
    with monkeypatch.context() as m:
        _no_decoding(m)
        for i in range(3):
            assert np.array_equal(reader[i], expected[i])
    # a half-written or damaged file is decoded again and rewritten, not a crash
    damaged = reader.npy_path(1)
    damaged.write_bytes(damaged.read_bytes()[:1000])
    assert np.array_equal(reader[1], expected[1])
    assert np.array_equal(np.load(damaged), expected[1])
    # an edited image is not served stale: its cache file is keyed by size and mtime
    old = reader.npy_path(0)
    cv2.imwrite(str(files[0]), cv2.flip(cv2.imread(str(files[0])), 1), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert reader.npy_path(0) != old
    assert np.array_equal(reader[0], ImageReader(files, shapes, 160, False)[0])
    # other sizes and the training resize get files of their own
    assert ImageReader(files, shapes, 128, True, cache="disk", cache_dir=cache).npy_path(2) != reader.npy_path(2)
    # so does another rule for the resized size (files written under the old one are not served)
    before = [reader.npy_path(i) for i in range(3)]
    monkeypatch.setattr("data.images.resized_shape", lambda h, w, size: (h * size // max(h, w), w * size // max(h, w)))
    changed = [reader.shape(i) != expected[i].shape[:2] for i in range(3)]
    assert any(changed) and [reader.npy_path(i) != p for i, p in enumerate(before)] == changed


def test_disk_cache_without_room_is_refused(tmp_path, monkeypatch):
    files, shapes = _mini_images(4)
    monkeypatch.setattr("data.images.shutil.disk_usage", lambda p: type("U", (), {"free": 2**20})())
    with pytest.raises(ConfigError, match=r"--cache disk: needs .* GiB more in .* but only .* GiB is free"):
        ImageReader(files, shapes, 640, True, cache="disk", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.npy"))


def test_read_only_dataset_keeps_its_caches_elsewhere(tmp_path, monkeypatch):
    """Label index, YOLO->COCO JSON and disk image cache go to $XDG_CACHE_HOME/gradpath when the
    dataset folder is read-only (no write bit: as root too, whom chmod alone does not stop)."""
    data = tmp_path / "ro"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for k, f in enumerate(_mini_images(3)[0]):
        shutil.copy(f, data / f"images/im{k}.jpg")
        (data / f"labels/im{k}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    cfg_file = _yaml(tmp_path, {"format": "yolo", "path": str(data), "names": ["a"],
                                "train": {"images": "images", "labels": "labels"}})
    folders = [data, data / "images", data / "labels"]
    for d in folders:
        d.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    try:
        build_dataloader(load_data_config(cfg_file), "train", 128, 2, cache="disk")
    finally:
        for d in folders:
            d.chmod(0o755)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written into the dataset
    kept = {p.name for p in (tmp_path / "xdg/gradpath").glob("*/*")}
    assert {"labels.index.npz", "labels.coco.json", ".cache-train"} <= kept, kept
    assert len(list((tmp_path / "xdg/gradpath").glob("*/.cache-train/*.npy"))) == 3


def test_rect_training_batches_take_their_shapes():
    """--rect for training: no mosaic, each image letterboxed to its batch's rectangle, not a square."""
    random.seed(0)
    loader, ds = build_dataloader(load_data_config(MINI), "train", 256, 4, Hyp.load().aug, rect=True)
    assert not ds.mosaic
    shapes = set()
    for b, batch in enumerate(loader):
        h, w = batch.images.shape[2:]
        assert (h, w) == tuple(ds.batch_shapes[b * 4]) and max(h, w) == 256
        shapes.add((h, w))
        assert batch.masks.shape[1:] == (h // 4, w // 4)
        if len(batch.boxes):
            assert batch.boxes[:, [0, 2]].max() <= w and batch.boxes[:, [1, 3]].max() <= h
    assert any(h != w for h, w in shapes), shapes


def _rect(x1, y1, x2, y2) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)


@pytest.mark.parametrize("ratio, kept", [(0.1, [0, 4]), (0.01, [0, 1, 4])])
def test_label_filter_keeps_and_drops_hand_computed_boxes(ratio, kept):
    """On a 100x100 image, each instance's box before the warp is 50x50 (2500 px^2, times the
    warp's area scale 1) and its polygon after it as below."""
    polys = [_rect(10, 10, 60, 40),    # 50x30 = 1500: 0.6 of before: kept
             _rect(0, 0, 10, 20),      # 200: 0.08, over 0.01 but not 0.1
             _rect(0, 0, 2, 80),       # 2 px wide: too thin however large
             _rect(90, 90, 93, 93),    # 9: 0.0036, dropped by both
             _rect(-40, 50, 20, 70)]   # clipped to 20x20 = 400 (0.16): kept, box clipped to the image
    s = Sample(np.zeros((100, 100, 3), np.uint8), np.tile(np.float32([0, 0, 50, 50]), (5, 1)), np.arange(5), polys,
               0, "x.jpg", (100, 100))
    out = filter_instances(s, 1.0, ratio)
    assert out.classes.tolist() == kept
    assert np.allclose(out.boxes[-1], [0, 50, 20, 70])
    # the warp's area scale enters the comparison: at 4x, of 10000: 0.15, 0.02 and 0.04 are left
    assert filter_instances(s, 4.0, ratio).classes.tolist() == [0] + ([1, 4] if ratio == 0.01 else [])


def test_polygon_labels_use_the_lower_area_threshold(tmp_path):
    assert min_area_ratio(True) == 0.01 and min_area_ratio(False) == 0.1
    boxes = np.float32([[0, 0, 10, 20], [5, 5, 30, 30]])
    outline = np.concatenate([_rect(*b) for b in boxes])
    index = LabelIndex(np.array(["a.jpg"]), np.array([1]), np.array([[40, 40]], np.int32), np.array([0, 2]), boxes,
                       np.array([0, 1]), np.array([0, 4, 8]), outline)
    assert not index.has_polygons()  # box-only labels: the outlines of their boxes
    index.points = index.points.copy()
    index.points[5] += 1  # one real quadrilateral
    assert index.has_polygons()


def test_mosaic_judges_a_cut_object_by_what_its_tile_shows(monkeypatch):
    """Centre (64, 64) of a 128 canvas, no scale or shift: the 64x64 output shows canvas [32, 96].
    Tile 0 (96x96, placed at [-32, 64]) holds a box at x 0..70 of its image: canvas -32..38, cut by
    the tile at 0, visible 32..38. The official recipe compares the 6 px seen with the 38 px the
    mosaic showed (0.16 > 0.1: kept); compared with the uncut 70 px (0.09) it would be lost."""
    monkeypatch.setattr(random, "uniform", lambda a, b: (a + b) / 2)
    hyp = Hyp.load().replace(scale=0.0, translate=0.0, degrees=0.0, shear=0.0, perspective=0.0).aug
    first = Sample(np.full((96, 96, 3), 50, np.uint8), np.float32([[0, 70, 70, 90]]), np.array([3]),
                   [_rect(0, 70, 70, 90)], 0, "a.jpg", (96, 96))
    rest = [Sample(np.full((64, 64, 3), v, np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), [], v,
                   "b.jpg", (64, 64)) for v in (90, 160, 220)]
    out = mosaic4([first, *rest], 64, hyp, min_area_ratio=0.1)
    assert out.classes.tolist() == [3] and np.allclose(out.boxes, [[0, 6, 6, 26]])
