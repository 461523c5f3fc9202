"""benchmarks/scale.py in a small setting: the same code paths as the full-size figures (the
simulated set in both label forms, cold and warm index, loader memory over windows, torchrun
with --cache ram), checked for what they must show rather than for their timings."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_scale_benchmark_small_setting(tmp_path):
    out = tmp_path / "scale"
    cmd = [sys.executable, str(ROOT / "benchmarks/scale.py"), "--images", "2000", "--img-size", "160",
           "--batch-size", "4", "--batches", "3", "--ram-images", "48", "--startup-batch", "2", "--workers", "1",
           "--out", str(out), "--no-reference"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    figures = json.loads((out / "scale.json").read_text())["figures"]
    index = {(row["form"], row["phase"]): row for row in figures["index"] if row["who"] == "gradpath"}
    assert set(index) == {(f, p) for f in ("COCO JSON", "YOLO txt") for p in ("cold", "warm")}
    # both label forms index the same 2,000 images and instances, built and then loaded from the cache
    counts = {(row["images"], row["instances"]) for row in index.values()}
    assert len(counts) == 1 and counts.pop()[0] == 2000
    assert all(row["cache_bytes"] > 0 and row["peak_rss"] > 0 for row in index.values())
    # torchrun from launch to the first step: cold, local rank 0 built the index and rank 1 waited for
    # it; warm, nobody built it
    startup = {row["phase"]: row for row in figures["startup"]}
    assert startup["cold"]["builds"] == 1 and startup["cold"]["waited"] >= 1
    assert startup["cold"]["built_by"]["local_rank"] == 0 and startup["warm"]["builds"] == 0
    assert all(row["seconds"] > 0 and row["peak_pss"] > 0 for row in startup.values())
    # loader memory: a figure per window, flat (the index is a few arrays shared by the workers)
    pss = figures["loader"][0]["pss"]
    assert len(pss) == 3 and pss[-1] <= 1.1 * pss[0]
    # --cache ram under torchrun (a set of its own, so cold again): one process built the index and the
    # other waited for it; one RAM block per node, made by one rank, mapped by the other and the workers,
    # held once
    ram = figures["ram"]
    assert ram["builds"] == 1 and ram["waited"] >= 1
    assert ram["processes"] >= 3 and ram["block_bytes"] > 0
    assert abs(ram["pss_sum"] - ram["block_bytes"]) <= 0.02 * ram["block_bytes"] + 2**18
    assert ram["rss_sum"] > ram["block_bytes"]  # mapped by more than the process that filled it
    for row in ("| cold index cache |", "| at the first training step |", "| gradpath | YOLO txt |"):
        assert row in r.stdout, r.stdout
