"""Convert an official YOLOv5 / YOLOv7 checkpoint (a pickled whole-model object) into gradpath's format,
without importing or running any of the file's code.

    python -m models.convert yolov5n.pt --out weights/yolov5n.pt [--check yolov5n.npz]

The architecture comes from the file: its cfg dict is translated to our blocks (models/official_cfg.py),
the model is built, and every tensor is mapped by its layer and role, every shape checked. An official
module we do not know, or a tensor left over, fails naming the layer. Anchors stored in grid units
become pixels. `--check NPZ` runs the converted model on the npz's `input` and compares with the
official `predictions` (and `protos`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.model import Model, build_model
from models.official.cfg import Source, Translation, translate
from models.official.unpickler import OfficialModel, read_official
from models.parser import CfgError
from utils.io import FORMAT_VERSION, save_checkpoint
from utils.errors import CheckpointError

COCO80_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
              33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
              60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
CHECK_LIMITS = {"boxes": 0.02, "probabilities": 1e-3, "coefficients": 1e-3, "protos": 1e-3}


def _source_of(rest: str, sources: list[Source]) -> Source | None:
    """The most specific source whose module path prefixes `rest`."""
    hits = [s for s in sources if rest.startswith(s.ours)]
    return max(hits, key=lambda s: len(s.ours)) if hits else None


def map_tensors(model: Model, official: OfficialModel, tr: Translation) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state_dict filled from the official tensors by layer and role; (state, notes)."""
    state, theirs, src = model.state_dict(), official.tensors, official.source
    head_i = len(model.layers) - 1
    kinds = {layer.index: layer.kind for layer in official.layers}
    if official.stride and [float(s) for s in model.stride] != official.stride:
        raise CheckpointError(f"{src}: strides {official.stride} in the file, {model.stride.tolist()} in the "
                              f"translated model")
    out, used = {}, set()
    for key, ref in state.items():
        _, i, rest = key.split(".", 2)
        i = int(i)
        if i == head_i and rest == "strides":
            out[key] = ref
            continue
        if i == head_i and rest == "anchors":
            okey = next(k for k in theirs if k.endswith(".anchors"))
            out[key] = theirs[okey].float() * model.stride.view(-1, 1, 1)  # grid units -> pixels
            used.add(okey)
            continue
        s = _source_of(rest, tr.sources[i])
        if s is None:
            raise CheckpointError(f"{src}: our {key} has no official counterpart (translation gap)")
        okey = f"model.{s.layer}.{s.theirs}{rest[len(s.ours):]}"
        t = theirs.get(okey)
        where = f"official layer {s.layer} ({kinds.get(s.layer, '?')})"
        if t is None:
            raise CheckpointError(f"{src}: {where} has no tensor {okey} for our {key}")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{src}: {where}: {okey} {tuple(t.shape)} does not fit our {key} {tuple(ref.shape)}")
        out[key] = t.to(ref.dtype)
        used.add(okey)
    notes = []
    for prefix, why in tr.skipped.items():
        hit = [k for k in theirs if k.startswith(prefix) and k not in used]
        used.update(hit)
        if hit and "grid" not in prefix:
            notes.append(f"not converted: {why}")
    left = [k for k in theirs if k not in used]
    if left:
        layer = int(left[0].split(".")[1])
        raise CheckpointError(f"{src}: official layer {layer} ({kinds.get(layer, '?')}): tensor {left[0]} has no "
                              f"place in the translated model ({len(left)} left over)")
    return out, notes


def build_from_official(official: OfficialModel) -> tuple[Model, list[str]]:
    """Our model with the official weights (FP32), and notes on what was not converted."""
    anchors = next((t for k, t in official.tensors.items() if k.endswith(".anchors")), None)
    if anchors is None or not official.stride:
        raise CheckpointError(f"{official.source}: no anchors or strides in the file: not an anchor-based model")
    pixels = anchors.float() * torch.tensor(official.stride).view(-1, 1, 1)
    anchor_lists = [[round(float(v), 4) for v in level.flatten()] for level in pixels]
    try:
        tr = translate(official.cfg, anchor_lists, official.source)
        model = build_model(tr.cfg)
    except CfgError as e:
        raise CheckpointError(str(e)) from None
    bad_eps = {e for e in official.bn_eps if abs(e - 1e-3) > 1e-9}
    if bad_eps:
        raise CheckpointError(f"{official.source}: BatchNorm eps {sorted(bad_eps)}; gradpath's convs use 1e-3")
    state, notes = map_tensors(model, official, tr)
    model.load_state_dict(state)
    return model.float(), notes


def checkpoint_dict(model: Model, official: OfficialModel) -> dict[str, Any]:
    """A gradpath checkpoint (state_dict + config) of a model converted from `official`."""
    names = official.names if len(official.names) == model.nc else [str(i) for i in range(model.nc)]
    return {"model": model.state_dict(), "ema": None, "epoch": -1, "best_fitness": -1.0,
            "config": {"model": model.yaml, "nc": model.nc, "names": names,
                       "category_ids": COCO80_IDS if model.nc == 80 else list(range(model.nc)),
                       "img_size": 1280 if max(model.stride) >= 64 else 640, "converted_from": official.source},
            "version": FORMAT_VERSION, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def official_checkpoint(src: str | Path) -> tuple[dict[str, Any], list[str]]:
    """A gradpath checkpoint dict made in memory from an official file, and conversion notes."""
    official = read_official(src)
    model, notes = build_from_official(official)
    return checkpoint_dict(model, official), notes


@dataclass
class CheckResult:
    """Largest absolute differences from the official outputs, by kind."""

    diffs: dict[str, float]

    @property
    def ok(self) -> bool:
        return all(v <= CHECK_LIMITS[k] for k, v in self.diffs.items())

    def line(self) -> str:
        parts = [f"{k} {v:.3g} (limit {CHECK_LIMITS[k]:g})" for k, v in self.diffs.items()]
        return f"check {'passed' if self.ok else 'FAILED'}: largest differences: " + ", ".join(parts)


@torch.no_grad()
def check(model: Model, npz: str | Path) -> CheckResult:
    """Run `model` (eval, FP32) on the npz's input; compare with its official-layout outputs."""
    data = np.load(npz)
    missing = {"input", "predictions"} - set(data.files)
    if missing:
        raise CheckpointError(f"{npz}: missing arrays {sorted(missing)}")
    levels: list = []
    hook = model.head.register_forward_hook(lambda m, inp, out: levels.append(m.level_outputs(inp[0])))
    try:
        model.eval()
        _, proto = model(torch.from_numpy(data["input"]).float())
    finally:
        hook.remove()
    ours = model.head.decode_raw(levels[0]).numpy()
    ref = data["predictions"]
    if ours.shape != ref.shape:
        raise CheckpointError(f"{npz}: predictions {ref.shape}, ours {ours.shape}")
    nc = model.nc
    diffs = {"boxes": float(np.abs(ours[..., :4] - ref[..., :4]).max()),
             "probabilities": float(np.abs(ours[..., 4:5 + nc] - ref[..., 4:5 + nc]).max())}
    if ref.shape[-1] > 5 + nc:
        diffs["coefficients"] = float(np.abs(ours[..., 5 + nc:] - ref[..., 5 + nc:]).max())
    if "protos" in data.files:
        diffs["protos"] = float(np.abs(proto.numpy() - data["protos"]).max())
    return CheckResult(diffs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="official YOLOv5 / YOLOv7 .pt file")
    p.add_argument("--out", required=True, help="output gradpath checkpoint")
    p.add_argument("--check", metavar="NPZ", help="compare outputs with the official ones in NPZ")
    args = p.parse_args(argv)
    try:
        official = read_official(args.src)
        model, notes = build_from_official(official)
        for note in notes:
            print(f"convert: {note}", file=sys.stderr)
        info = model.info()
        print(f"{args.src}: {len(official.layers)} official layers -> {info['layers']} gradpath layers, "
              f"{info['params']:,} parameters, {model.nc} classes")
        print(f"wrote {save_checkpoint(checkpoint_dict(model, official), args.out)}")
        result = check(model, args.check) if args.check else None
    except (CheckpointError, ValueError, OSError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(result.line())
        return 0 if result.ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
