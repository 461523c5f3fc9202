#!/usr/bin/env python
"""The reference side of benchmarks/scale.py's loader-memory figure: Ultralytics' training loader
(segment task, mosaic) with N workers, its PSS (this process and its workers) sampled every 10
batches over W windows of B batches. Runs in the reference venv (ultralytics installed), never
in ours; imports none of gradpath.

    REF_VENV/bin/python benchmarks/ultralytics_loader_memory.py DATA_YAML IMG BATCH WORKERS WINDOWS BATCHES

DATA_YAML is in Ultralytics' own format (an absolute `path`). Prints one line
`RESULT {"pss": [peak bytes per window], "seconds": s}`.
"""
import json
import sys
import time

import psutil
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset


def tree_pss() -> int:
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def main() -> None:
    data_yaml = sys.argv[1]
    img, batch, workers, windows, batches = map(int, sys.argv[2:7])
    cfg = get_cfg(overrides=dict(task="segment", imgsz=img, mosaic=1.0, mixup=0.0, copy_paste=0.0, cache=False))
    data = check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train", stride=32)
    it = iter(build_dataloader(dataset, batch, workers, shuffle=True))  # its loader runs on across epochs
    peaks, t0 = [], time.perf_counter()
    for _ in range(windows):
        peak = 0
        for b in range(batches):
            next(it)
            if b % 10 == 9 or b == batches - 1:
                peak = max(peak, tree_pss())
        peaks.append(peak)
    print("RESULT " + json.dumps({"pss": peaks, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
