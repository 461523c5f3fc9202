"""The formats export.py writes (its --include choices). No imports: export.py's parser reads it
without loading torch."""
from __future__ import annotations

FORMATS = ("onnx", "openvino", "torchscript", "engine")
