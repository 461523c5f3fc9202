"""One label index and one --cache ram block per node, on a real 2-process gloo group (CPU): local
rank 0 builds or fills, the other rank waits and loads or maps what it made."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as tdist
import torch.multiprocessing as mp
import yaml

from conftest import BUNDLED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(tmp_path: Path, name: str, body: str | None = None) -> Path:
    """coco-mini's val split with its JSON copied into tmp_path (the cache is written beside it);
    `body` replaces the JSON's text."""
    folder = tmp_path / name
    folder.mkdir()
    ann = folder / "instances.json"
    if body is None:
        shutil.copy(BUNDLED / "annotations/instances_val.json", ann)
    else:
        ann.write_text(body)
    split = {"images": str(BUNDLED / "images"), "annotations": str(ann)}
    cfg = folder / "data.yaml"
    cfg.write_text(yaml.safe_dump({"format": "coco", "path": str(folder), "val": split}))
    return cfg


def _rank_env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")


def _worker(rank: int, port: int, tmp: str, results) -> None:
    _rank_env(rank, port)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = _Capture()
    logging.getLogger("gradpath").addHandler(log)
    tdist.init_process_group("gloo", init_method="env://")
    out = {"pid": os.getpid()}
    try:
        for name, case in (("index", _index_once), ("failed", _leader_fails), ("ram", _ram_cache_once),
                           ("timeout", _wait_times_out)):
            tdist.barrier()
            log.lines.clear()
            try:
                out[name] = case(rank, Path(tmp))
            except Exception as e:  # reported to the test, which says what went wrong where
                out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
            out[name + "_log"] = list(log.lines)
        tdist.barrier()  # rank 0 hosts the store: it stays until rank 1 is done with it
    finally:
        results[rank] = out
        tdist.destroy_process_group()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _index_once(rank: int, tmp: Path) -> dict:
    """Rank 0 starts building only once rank 1 has found no cache (so rank 1 must wait for it);
    rank 1 would fail if it built anything."""
    import data.datasets as ds
    from data.config import load_data_config
    from data.label_index import LabelIndex

    flag, real_read, real_load = tmp / "rank1-checked", ds.read_coco, LabelIndex.load
    if rank == 0:
        def read_after_rank1(*a, **k):
            t0 = time.monotonic()
            while not flag.exists() and time.monotonic() - t0 < 60:
                time.sleep(0.05)
            return real_read(*a, **k)
        ds.read_coco = read_after_rank1
    else:
        def load_then_flag(*a, **k):
            found = real_load(*a, **k)
            flag.touch()
            return found
        ds.LabelIndex.load = load_then_flag
        ds.read_coco = lambda *a, **k: (_ for _ in ()).throw(AssertionError("rank 1 built the index"))
    try:
        index = ds.load_index(load_data_config(tmp / "index/data.yaml"), "val")
    finally:
        ds.read_coco, ds.LabelIndex.load = real_read, real_load
    with np.load(tmp / "index/instances.index.npz") as z:
        cached_by = json.loads(str(z["meta"]))["built_by"]
    return {"built_by": index.built_by, "cached_by": cached_by, "n": len(index), "boxes": index.boxes.tolist()}


def _leader_fails(rank: int, tmp: Path) -> dict:
    from data.config import load_data_config
    from data.datasets import load_index
    from utils.errors import ConfigError

    cfg = load_data_config(tmp / "broken/data.yaml")
    try:
        load_index(cfg, "val")
    except ConfigError as e:
        return {"raised": str(e)}
    return {"raised": None}


def _ram_cache_once(rank: int, tmp: Path) -> dict:
    """Rank 1 maps rank 0's block: it never decodes an image, not in its loader's worker either."""
    import cv2

    from data.config import load_data_config
    from data.loader import build_dataloader

    cfg = load_data_config(tmp / "index/data.yaml")
    if rank == 1:
        cv2.imread = lambda *a, **k: (_ for _ in ()).throw(AssertionError("rank 1 decoded an image"))
    try:
        loader, ds = build_dataloader(cfg, "val", 128, 4, rect=True, cache="ram", workers=1)
        batch = next(iter(loader))
        maps = [ln for ln in Path("/proc/self/maps").read_text().splitlines() if "gradpath-cache-ram" in ln]
        first = ds.images[int(ds.order[0])]
        return {"maker": ds.images.block.handle.pid, "writable": ds.images.block.writable, "maps": len(maps),
                "batch": tuple(batch.images.shape), "sum": int(first.sum(dtype=np.int64)),
                "size": ds.images.block.size}
    finally:
        # rank 0's block lives as long as its dataset: here, until rank 1's worker has mapped it too
        # (in training the dataset lives for the run; without this, rank 0 returning first closed
        # the block while rank 1's spawned worker was still starting, and the worker died)
        tdist.barrier()


def _wait_times_out(rank: int, tmp: Path) -> dict:
    import utils.dist as dist

    dist.HEARTBEAT_S = 0.2
    info = dist.dist_info_from_env()
    if rank == 0:
        return {"value": "leader publishes nothing"}
    try:
        dist.from_local_leader(info, "never-published", "publish a key it never publishes", lambda: "x", timeout_s=0.7)
    except TimeoutError as e:
        return {"raised": str(e)}
    return {"raised": None}


def _check(result: dict, name: str) -> dict:
    value = result[name]
    assert "error" not in value, value.get("trace", value)
    return value


@pytest.mark.slow
def test_one_index_and_one_ram_cache_per_node(tmp_path):
    _data(tmp_path, "index")
    _data(tmp_path, "broken", body='{"categories": [{"id": 1, "name": "a"}], "images": 7}')
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    # the index: rank 0 built it (its pid is in the cache), rank 1 waited, saying so, and loaded it
    i0, i1 = _check(r0, "index"), _check(r1, "index")
    assert i0["built_by"]["pid"] == i0["cached_by"]["pid"] == r0["pid"] and i0["built_by"]["local_rank"] == 0
    assert i1["built_by"]["pid"] == r0["pid"] != r1["pid"]
    assert any("waiting for local rank 0 to build the label index" in ln for ln in r1["index_log"])
    assert any("built it" in ln and str(r0["pid"]) in ln for ln in r1["index_log"])
    assert i0["n"] == i1["n"] == 8 and i0["boxes"] == i1["boxes"]
    # a build that fails on rank 0 fails on rank 1 too, with the same one-line error, instead of hanging
    f0, f1 = _check(r0, "failed"), _check(r1, "failed")
    assert f0["raised"] and f0["raised"] == f1["raised"] and "'images' list missing" in f0["raised"]
    assert any("building it here" in ln for ln in r1["failed_log"])
    # --cache ram: one block, made by rank 0, mapped read-only by rank 1 (and its worker)
    m0, m1 = _check(r0, "ram"), _check(r1, "ram")
    assert m0["maker"] == m1["maker"] == r0["pid"] and m0["writable"] and not m1["writable"]
    assert m0["maps"] >= 1 and m1["maps"] >= 1 and m0["size"] == m1["size"] > 0
    assert m0["sum"] == m1["sum"] and m0["batch"] == m1["batch"]
    assert any("maps local rank 0's" in ln for ln in r1["ram_log"])
    # a rank whose leader never answers gives up after the timeout, having said it was waiting
    t1 = _check(r1, "timeout")
    assert t1["raised"] and "within 1 s" in t1["raised"]
    assert sum("still waiting for local rank 0" in ln for ln in r1["timeout_log"]) >= 2
