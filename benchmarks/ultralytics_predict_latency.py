#!/usr/bin/env python
"""The reference side of benchmarks/inference.py --backends, one exported file per process (as a
deployment runs one model, and as ours are timed): Ultralytics' predictor on one image, batch 1,
640, CPU, end to end (read, letterbox, model, NMS, masks). Runs in the reference venv, imports
none of gradpath.

    REF_VENV/bin/python benchmarks/ultralytics_predict_latency.py MODEL IMAGE RUNS WARMUP

Prints one line `RESULT {"e2e_ms": median, "speed": {its own preprocess/inference/postprocess ms}}`.
"""
import json
import statistics
import sys
import time

from ultralytics import YOLO


def main() -> None:
    model_path, image, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model = YOLO(model_path, task="segment")
    times, speeds = [], []
    for i in range(warmup + runs):
        t = time.perf_counter()
        result = model.predict(image, imgsz=640, verbose=False)[0]
        if i >= warmup:
            times.append(time.perf_counter() - t)
            speeds.append(result.speed)
    speed = {k: statistics.median(s[k] for s in speeds) for k in speeds[0]}
    print("RESULT " + json.dumps({"e2e_ms": 1000 * statistics.median(times), "speed": speed}))


if __name__ == "__main__":
    main()
