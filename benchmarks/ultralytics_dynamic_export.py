#!/usr/bin/env python
"""The reference side of benchmarks/inference.py --backends --shapes rect: Ultralytics' own ONNX,
OpenVINO FP32 and OpenVINO INT8 exports, with dynamic=True, of a saved Ultralytics model. Runs in
the reference venv, in the folder of the model, and imports none of gradpath.

    REF_VENV/bin/python benchmarks/ultralytics_dynamic_export.py bench_model.pt DATA_YAML

Writes bench_model_dynamic.onnx, bench_model_dynamic_openvino_model/ and
bench_model_dynamic_int8_openvino_model/ beside it (DATA_YAML: the INT8 calibration set).
"""
import shutil
import sys

from ultralytics import YOLO


def main() -> None:
    model, data = sys.argv[1], sys.argv[2]
    dynamic = model.replace(".pt", "_dynamic.pt")
    shutil.copyfile(model, dynamic)  # the exports are named after the checkpoint
    YOLO(dynamic).export(format="onnx", imgsz=640, dynamic=True)
    YOLO(dynamic).export(format="openvino", imgsz=640, dynamic=True)
    YOLO(dynamic).export(format="openvino", imgsz=640, dynamic=True, int8=True, data=data)


if __name__ == "__main__":
    main()
