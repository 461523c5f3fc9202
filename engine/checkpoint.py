"""Rebuild a model from a gradpath checkpoint (state_dict + config; no source code pickled)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.model import build_model
from models.official.unpickler import is_official_checkpoint
from utils.errors import CheckpointError
from utils.io import load_checkpoint


def read_weights(path: str | Path) -> dict[str, Any]:
    """A gradpath checkpoint dict from a gradpath file, or from an official YOLOv5/YOLOv7 file
    converted in memory (its code is never imported or run: see models/official_io.py)."""
    if not is_official_checkpoint(path):
        return load_checkpoint(path)
    from models.official.convert import official_checkpoint

    ckpt, notes = official_checkpoint(path)
    print(f"{path}: official YOLOv5/YOLOv7 checkpoint, converted in memory"
          f"{' (' + '; '.join(notes) + ')' if notes else ''}; `python -m models.convert` saves it", file=sys.stderr)
    return ckpt


DEFAULT_IMG_SIZE = 640  # the inference size of a checkpoint that does not record its training size


@dataclass(frozen=True)
class BakedNms:
    """The selection an end-to-end export runs inside its graph (utils.postprocess's parameters):
    scores above conf_thres (per class with multi_label, else each box's best class), NMS per
    class at iou_thres, the topk best of each image kept."""

    conf_thres: float
    iou_thres: float
    topk: int
    multi_label: bool = False


@dataclass(frozen=True)
class ModelMeta:
    """What inference needs of a trained model besides its weights; checkpoints hold it in their
    config, exported files as string metadata. task: "segment" (masks) or "detect". nms: set in
    end-to-end exports, whose outputs are detections (the thresholds baked in), None for raw
    head outputs."""

    names: tuple[str, ...]
    category_ids: tuple[int, ...]
    img_size: int
    stride: int
    task: str
    single_cls: bool = False
    nms: BakedNms | None = None

    @property
    def end2end(self) -> bool:
        return self.nms is not None

    @classmethod
    def of(cls, ckpt: dict[str, Any], model: nn.Module) -> "ModelMeta":
        """From a checkpoint's config and the model built from it (names default to indices)."""
        config = ckpt.get("config") or {}
        names = tuple(config.get("names") or [str(i) for i in range(model.nc)])
        return cls(names, tuple(int(i) for i in (config.get("category_ids") or range(len(names)))),
                   int(config.get("img_size") or DEFAULT_IMG_SIZE), int(max(model.stride)),
                   "segment" if getattr(model, "nm", 0) else "detect",
                   bool((config.get("args") or {}).get("single_cls", False)))

    def to_strings(self) -> dict[str, str]:
        """Flat key/value strings: what ONNX metadata_props, OpenVINO rt_info, TorchScript extra
        files and our TensorRT header all hold (and what Netron shows)."""
        out = {"names": json.dumps(list(self.names)), "category_ids": json.dumps(list(self.category_ids)),
               "img_size": str(self.img_size), "stride": str(self.stride), "task": self.task,
               "single_cls": json.dumps(self.single_cls), "end2end": json.dumps(self.end2end)}
        if self.nms is not None:
            out.update({k: json.dumps(v) for k, v in asdict(self.nms).items()})
        return out

    @classmethod
    def from_strings(cls, values: dict[str, str], where: str = "the exported file") -> "ModelMeta":
        """An exported file's metadata. Files of the first export.py (raw ONNX: names, ids, size,
        stride) read as raw outputs; their task is "" (their outputs say it)."""
        if "names" not in values:
            raise CheckpointError(f"{where}: no gradpath metadata inside (was it written by export.py?)")
        try:
            names = tuple(json.loads(values["names"]))
            nms = None
            if json.loads(values.get("end2end", "false")):
                nms = BakedNms(float(values["conf_thres"]), float(values["iou_thres"]), int(values["topk"]),
                               bool(json.loads(values.get("multi_label", "false"))))
            return cls(names, tuple(json.loads(values.get("category_ids", "[]")) or range(len(names))),
                       int(values.get("img_size", DEFAULT_IMG_SIZE)), int(values.get("stride", 32)),
                       values.get("task", ""), bool(json.loads(values.get("single_cls", "false"))), nms)
        except (KeyError, ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            raise CheckpointError(f"{where}: unreadable gradpath metadata ({type(e).__name__}: {e})") from None


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint", use_ema: bool = True) -> nn.Module:
    """Build the model the checkpoint's config describes and load its (EMA) weights, strictly."""
    config = ckpt.get("config") or {}
    if "model" not in config:
        raise CheckpointError(f"{path}: checkpoint has no model config (config['model'])")
    model = build_model(config["model"], num_classes=config.get("nc"))
    state = ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"]
    report = load_state_dict_checked(model, state, path)
    if report:
        raise CheckpointError(f"{path}: weights do not match the checkpoint's own config: {report}")
    return model


def _drop_head_alias(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints written before Model.head became a property hold the last layer twice, once
    more under 'head.*'; those copies are dropped (the 'layers.<last>.*' tensors are the same)."""
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> str:
    """Load what matches exactly; return '' or a one-line summary of what differed."""
    state = _drop_head_alias(state)
    own = model.state_dict()
    report = load_report(own, state)
    if report:
        return report
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return ""


def transfer_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path = "") -> tuple[int, int, str]:
    """Copy the tensors whose name and shape match (for --weights fine-tuning).

    Returns (loaded, total, a one-line summary of the layers that differ, '' when none)."""
    state = _drop_head_alias(state)
    own = model.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own), load_report(own, state)


def load_report(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], limit: int = 5) -> str:
    """Which layers differ between a model's state_dict and a checkpoint's, in one line."""
    layers = lambda keys: sorted({".".join(k.split(".")[:2]) for k in keys})  # noqa: E731 - "layers.<i>"
    shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    parts = []
    for what, keys in (("shape differs", shape), ("missing in checkpoint", [k for k in own if k not in state]),
                       ("not in the model", [k for k in state if k not in own])):
        if keys:
            names = layers(keys)
            parts.append(f"{what}: {', '.join(names[:limit])}" + (f" (+{len(names) - limit} more)" if len(names) > limit else ""))
    return "; ".join(parts)


def load_model(weights: str | Path, device: torch.device | str = "cpu", fuse: bool = False) -> tuple[nn.Module, dict]:
    """(eval-mode float model on `device`, checkpoint dict) from a gradpath or official .pt file."""
    ckpt = read_weights(weights)
    model = model_from_checkpoint(ckpt, weights).float().eval()
    if fuse:
        model = model.fuse()
    return model.to(device), ckpt
