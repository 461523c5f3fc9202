"""What every exported file carries about its model: class names and COCO ids, stride, input size,
task, and whether its outputs are raw head outputs or end-to-end detections (with the thresholds
baked in). Stored as string key/value pairs, the form ONNX metadata, OpenVINO rt_info,
TorchScript extra files and our TensorRT header all hold."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from utils.checkpoint import CheckpointError

FORMAT = "gradpath-export-1"


class MetadataError(CheckpointError):
    """An exported file's metadata is missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class ExportMeta:
    names: list[str]
    category_ids: list[int]
    stride: int
    img_size: int
    task: str  # "detect" or "segment"
    end2end: bool = False
    conf_thres: float = 0.0  # end-to-end only: the thresholds and top-k baked into the graph
    iou_thres: float = 0.0
    topk: int = 0
    multi_label: bool = False

    @property
    def nc(self) -> int:
        return len(self.names)

    def to_strings(self) -> dict[str, str]:
        return {"format": FORMAT, **{k: json.dumps(v) for k, v in asdict(self).items()}}

    @classmethod
    def from_strings(cls, values: dict[str, str], where: str) -> "ExportMeta":
        if values.get("format") != FORMAT:
            raise MetadataError(f"{where}: no gradpath export metadata (was it written by export.py?)")
        try:
            kw = {f.name: json.loads(values[f.name]) for f in fields(cls) if f.name in values}
            return cls(**kw)
        except (json.JSONDecodeError, TypeError) as e:
            raise MetadataError(f"{where}: unreadable export metadata: {e}") from None


def meta_from_checkpoint(ckpt: dict, nc: int, nm: int, stride: int, img_size: int) -> ExportMeta:
    """The raw-output metadata of a loaded checkpoint (config names and ids; 0..nc-1 when absent)."""
    config = ckpt.get("config", {})
    names = list(config.get("names") or [str(i) for i in range(nc)])
    ids = list(config.get("category_ids") or range(len(names)))
    return ExportMeta(names, [int(i) for i in ids], int(stride), int(img_size), "segment" if nm else "detect")
