"""The cross-rank decisions of the trainer on a real 2-process gloo group (CPU)."""
from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from utils.dist import DistInfo, all_reduce_max


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    info = DistInfo(rank=rank, local_rank=rank, world_size=2)
    try:
        # only rank 1 sees a non-finite loss: both must take the skip branch
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        results[rank] = all_reduce_max(float(not torch.isfinite(loss)), info, torch.device("cpu"))
    finally:
        tdist.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_makes_every_rank_skip():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: 1.0, 1: 1.0}


def _val_data(tmp_path, n: int = 23):
    """A COCO-form YAML over n of the bundled real images (odd: the ranks' shares differ)."""
    import json

    import yaml

    from conftest import BUNDLED

    src = json.loads((BUNDLED / "annotations/instances_train.json").read_text())
    images = src["images"][:n]
    ids = {im["id"] for im in images}
    sub = {**src, "images": images, "annotations": [a for a in src["annotations"] if a["image_id"] in ids]}
    (tmp_path / "ann.json").write_text(json.dumps(sub))
    split = {"images": str(BUNDLED / "images"), "annotations": str(tmp_path / "ann.json")}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"format": "coco", "path": str(tmp_path), "val": split}))
    return tmp_path / "data.yaml"


def _evaluate(data, weights, batch: int, info: DistInfo, **kw):
    """(images this rank predicted, evaluate()'s result) of a checkpoint at 320."""
    from data.config import load_data_config
    from data.loader import build_dataloader
    from engine.checkpoint import load_model
    from engine.eval.evaluator import evaluate

    loader, dataset = build_dataloader(load_data_config(data), "val", 320, batch, rect=True, workers=0,
                                       rank=info.rank, world_size=info.world_size, stride=32, pin_memory=False)
    model, _ = load_model(weights)
    shown = sum(len(b.image_ids) for b in loader)
    return shown, evaluate(model, loader, dataset, torch.device("cpu"), dist=info, **kw)


def _both(data, official, out, batch: int, info: DistInfo):
    """The trained yolov5n's box scores; the seg model's results with masks (its weights are
    random: conf 0 keeps its 30 best guesses per image), written to out/predictions.json."""
    shown, det = _evaluate(data, official / "yolov5n.pt", batch, info)
    _, seg = _evaluate(data, official / "yolov5n-seg.pt", batch, info, conf_thres=0.0, max_det=30, save_dir=out,
                       save_json=True)
    if det is None:
        return shown, None
    per_class = {k: {c: None if math.isnan(v) else v for c, v in pc.items()} for k, pc in det.per_class.items()}
    return shown, (det.box, per_class, det.n_images, det.n_detections, seg.mask, seg.n_detections)


def _val_worker(rank: int, port: int, data, official, out, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = _both(data, official, out, 4, DistInfo(rank=rank, local_rank=rank, world_size=2))
    finally:
        tdist.destroy_process_group()


def test_two_rank_validation_scores_what_one_process_scores(tmp_path, official):
    """23 real images: two gloo ranks (4 images a batch each: the one-process batches of 8 split
    in two, 12 and 11 images) give rank 0 exactly the one-process box AP of the trained yolov5n,
    and the same results, RLE masks included, of a segmentation model."""
    import json

    data = _val_data(tmp_path)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the thread count, not the batch, changes conv sums in the last bits
    try:
        _, single = _both(data, official, tmp_path / "one", 8, DistInfo())
    finally:
        torch.set_num_threads(threads)
    results = mp.Manager().dict()
    mp.spawn(_val_worker, args=(_free_port(), data, official, tmp_path / "two", results), nprocs=2, join=True)
    (shown0, on_rank0), (shown1, on_rank1) = results[0], results[1]
    assert (shown0, shown1) == (12, 11) and on_rank1 is None
    assert single[0]["AP"] > 0.2 and single[2] == 23 and single[4]  # a trained model's scores, all images
    assert on_rank0 == single  # box stats, per-class AP (nan: no such class), counts, mask stats
    key = lambda d: (d["image_id"], -d["score"], d["category_id"], d["bbox"])  # noqa: E731
    one, two = (json.loads((tmp_path / k / "predictions.json").read_text()) for k in ("one", "two"))
    assert len(one) == single[5] > 23 and all("counts" in d["segmentation"] for d in one)
    assert sorted(one, key=key) == sorted(two, key=key)
