"""The pieces of benchmarks/inference.py --backends: one model exported to every backend asked
for, each timed at batch 1 on one real image end to end (read, letterbox, model, NMS, masks in
original pixels: detect.py's path without drawing or writing) and model only, each scored on a
COCO set; Ultralytics' own exports timed by the reference script in its own venv."""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch
import yaml

from benchmarks.harness.speed import time_forward_ms

# -bf16: the same OpenVINO file at the CPU's own inference precision (OpenVINO's default, bf16
# on CPUs that have it, as Ultralytics runs its exports; ours default to f32: --half selects it)
BACKENDS = ("pytorch", "onnxruntime", "openvino", "openvino-int8", "openvino-bf16", "openvino-int8-bf16")
FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino", "openvino-int8": "openvino", "openvino-bf16": "openvino",
             "openvino-int8-bf16": "openvino"}
REF_LINE = re.compile(r"^(\S+): ([\d.]+) ms median of (\d+)", re.M)


@dataclass
class Timing:
    backend: str
    input_shape: tuple[int, int]
    e2e_ms: float  # median per image, end to end
    model_ms: float  # median per image, the backend call alone
    detections: int  # on the timed image (detect.py's defaults: conf 0.25, NMS IoU 0.45)


def export_backends(src: Path, backends: tuple[str, ...], out_dir: Path, img_size: int, calib_data: str | None,
                    fraction: float, dynamic: bool = False) -> dict[str, Path]:
    """{backend: the file it runs}: one export.py run for every format the backends need (batch 1;
    static at img_size, as Ultralytics exports by default, or with --dynamic, which runs each
    image at its own letterbox shape)."""
    from engine.export.exporter import export
    from engine.export.options import ExportOptions

    include = tuple(dict.fromkeys(FORMAT_OF[b] for b in backends if b in FORMAT_OF))
    paths = {"pytorch": src}
    if include:
        int8 = any("int8" in b for b in backends)
        files = export(ExportOptions(weights=str(src), include=include, img_size=img_size, int8=int8,
                                     data=calib_data if int8 else None, fraction=fraction, int8_ap=False,
                                     dynamic=dynamic, out=str(out_dir / f"{src.stem}.onnx")))
        for e in files:
            name = "onnxruntime" if e.format == "onnx" else "openvino-int8" if e.precision == "int8" else "openvino"
            paths[name] = paths[f"{name}-bf16"] = e.path
    return {b: paths[b] for b in backends}


def reduced(backend: str) -> bool:
    """The backends run with --half (OpenVINO at the CPU's own precision)."""
    return backend.endswith("-bf16")


def time_backend(name: str, weights: Path, image: Path, img_size: int, warmup: int, runs: int) -> Timing:
    """Medians over `runs` after `warmup` untimed calls, on the CPU."""
    from engine.infer.predictor import PredictOptions, Predictor
    from engine.infer.sources import Frame

    predictor = Predictor(PredictOptions(weights=str(weights), source=str(image), img_size=img_size, device="cpu",
                                         half=reduced(name)))

    def once():
        return predictor.infer([Frame(cv2.imread(str(image)), str(image), 0, False)])[0]

    times, dets = [], None
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        dets = once()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    x, _ = predictor.preprocess([Frame(cv2.imread(str(image)), str(image), 0, False)])
    model_ms = time_forward_ms(predictor.backend, x, warmup, runs)
    return Timing(name, tuple(x.shape[-2:]), 1000 * statistics.median(times), model_ms, len(dets))


def child_failed(what: str, done: subprocess.CompletedProcess) -> RuntimeError:
    """The one-line error of a child process that failed: `what`, its exit code, its last line."""
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return RuntimeError(f"{what} exited {done.returncode}: {tail[0]}")


def run_json_line(cmd: list[str], tag: str, what: str, timeout: float, **kw) -> dict:
    """Run a child process and return the JSON after `tag` on its stdout, or a one-line
    RuntimeError naming `what` and the child's last line of output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(tag)), None)
    if done.returncode or line is None:
        raise child_failed(what, done)
    return json.loads(line[len(tag):])


def reference_env() -> dict[str, str]:
    """The environment of a reference-venv child: offline, nothing of gradpath on its path."""
    env = {**os.environ, "YOLO_AUTOINSTALL": "false", "YOLO_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def time_backend_isolated(name: str, weights: Path, image: Path, img_size: int, warmup: int, runs: int,
                          timeout: float = 1800) -> Timing:
    """time_backend in a fresh process, as a deployment runs one model: timed in the process
    that had exported, quantized and timed the other formats, the OpenVINO rows came out 20-40%
    slower (their threads competing with the pools those left behind)."""
    import sys

    code = ("import json, sys; from dataclasses import asdict; from pathlib import Path; "
            "from benchmarks.harness.deploy import time_backend; "
            "t = time_backend(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), *map(int, sys.argv[4:7])); "
            "print('TIMING ' + json.dumps(asdict(t)))")
    t = run_json_line([sys.executable, "-c", code, name, str(weights), str(image), str(img_size), str(warmup),
                       str(runs)], "TIMING ", f"timing {name} ({weights})", timeout,
                      cwd=Path(__file__).resolve().parents[2])
    return Timing(t["backend"], tuple(t["input_shape"]), t["e2e_ms"], t["model_ms"], t["detections"])


def box_mask_ap(weights: Path, data: Path, img_size: int, half: bool = False) -> tuple[float, float | None]:
    """val.py's (box AP, mask AP or None) of any format at its defaults (rectangular batches of
    32, square ones for a static export; half: OpenVINO at the CPU's own precision)."""
    from data.config import load_data_config
    from data.loader import build_dataloader
    from engine.eval.evaluator import evaluate
    from engine.infer.backends import load_backend

    cpu = torch.device("cpu")
    backend = load_backend(weights, cpu, half=half)
    fixed = getattr(backend, "fixed", None)
    model = backend.model if hasattr(backend, "model") else backend  # a .pt: the evaluator's module path
    loader, dataset = build_dataloader(load_data_config(data), "val", fixed[0] if fixed else img_size, 32,
                                       rect=fixed is None, workers=0, stride=backend.meta.stride, pin_memory=False)
    result = evaluate(model, loader, dataset, cpu)
    return result.box["AP"], (result.mask["AP"] if result.mask else None)


def merged_coco_val(folder: Path, out: Path) -> Path:
    """A data YAML whose val split is every image of a COCO-format folder (images/ and
    annotations/instances_*.json, merged into out/all.json): coco_dev32's 32 images as one set."""
    parts = [json.loads(p.read_text()) for p in sorted((folder / "annotations").glob("instances_*.json"))]
    merged = {**parts[0], "images": [i for p in parts for i in p["images"]],
              "annotations": [a for p in parts for a in p["annotations"]]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "all.json").write_text(json.dumps(merged))
    data = out / "all.yaml"
    data.write_text(yaml.safe_dump({"format": "coco", "path": str(folder),
                                    "val": {"images": "images", "annotations": str(out / "all.json")}}))
    return data


def ultralytics_latency(python: str, script: Path, image: Path, data: str, runs: int, workdir: Path,
                        timeout: float = 3600) -> dict[str, float]:
    """{format: end-to-end ms} of Ultralytics' own exports of yolov8n-seg (random weights, 640,
    batch 1, its predictor), from the reference script run in the reference venv (workdir gets
    its exports)."""
    workdir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([python, str(script), "yolov8n-seg.yaml", str(image), "--data", data, "--runs", str(runs)],
                       cwd=workdir, env=reference_env(), capture_output=True, text=True, timeout=timeout)
    found = {m.group(1): float(m.group(2)) for m in REF_LINE.finditer(r.stdout)}
    if r.returncode != 0 or not found:
        raise child_failed(script.name, r)
    return found


# the files ultralytics_export_latency.py leaves in its workdir, by its row names, and those
# benchmarks/ultralytics_dynamic_export.py adds (the same model exported with dynamic=True)
REF_FILES = {"pytorch": "bench_model.pt", "onnx": "bench_model.onnx", "openvino": "bench_model_openvino_model",
             "openvino-int8": "bench_model_int8_openvino_model", "onnx-dynamic": "bench_model_dynamic.onnx",
             "openvino-dynamic": "bench_model_dynamic_openvino_model",
             "openvino-int8-dynamic": "bench_model_dynamic_int8_openvino_model"}


def ultralytics_dynamic_exports(python: str, workdir: Path, data: str, timeout: float = 3600) -> None:
    """Ultralytics' ONNX, OpenVINO and OpenVINO INT8 exports with dynamic=True of the model
    ultralytics_latency saved in workdir (its predictor then letterboxes each image to its own
    shape, as ours does with export.py --dynamic)."""
    script = Path(__file__).resolve().parents[1] / "ultralytics_dynamic_export.py"
    r = subprocess.run([python, str(script), "bench_model.pt", data], cwd=workdir, env=reference_env(),
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise child_failed(script.name, r)


def ultralytics_latency_isolated(python: str, workdir: Path, image: Path, runs: int, warmup: int,
                                 timeout: float = 1800) -> dict[str, float]:
    """{format: end-to-end ms} of the exports ultralytics_latency left in workdir, each timed in
    a fresh process by benchmarks/ultralytics_predict_latency.py (the reference script times
    them all in the process that exported them; ours are timed one per process)."""
    script = Path(__file__).resolve().parents[1] / "ultralytics_predict_latency.py"
    return {name: run_json_line([python, str(script), file, str(image), str(runs), str(warmup)], "RESULT ",
                                f"{script.name} {file}", timeout, cwd=workdir, env=reference_env())["e2e_ms"]
            for name, file in REF_FILES.items() if (workdir / file).exists()}
