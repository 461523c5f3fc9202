"""Convert an official pickled checkpoint (YOLOv7-seg, YOLOR, YOLOv9: whole model objects) into
our format, without importing or running any of the file's code.

    python -m models.convert yolov7-seg.pt --cfg cfg/models/yolor-elan-seg.yaml --out weights/x.pt

The pickle is read by a restricted unpickler: class references under the official packages become
inert stand-ins that only record their state, tensors are rebuilt from the archive's raw storages,
and any other global (os.system, builtins.eval, subprocess, ...) is refused before anything runs.
The body's tensors are then matched to our cfg in layer and parameter order, every shape checked,
and the head's by role (prediction convs, implicit knowledge, prototypes, anchors).
"""
from __future__ import annotations

import argparse
import io
import pickle
import sys
import zipfile
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import FORMAT_VERSION, CheckpointError, save_checkpoint

# Namespaces whose classes are replaced by inert stand-ins (model code, containers, options).
STAND_IN_PREFIXES = ("models.", "utils.", "torch.nn.modules.", "torch.nn.parameter", "__main__", "argparse",
                     "pathlib", "numpy", "torch.cuda.amp", "torch.optim", "collections.defaultdict")
DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
          "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
          "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
          "BoolStorage": torch.bool}
SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex}  # plain data only
COCO80_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
              33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
              60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


class StandIn:
    """An inert replacement for a pickled class: remembers its constructor args and state only."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})

    def __call__(self, *args: Any, **kwargs: Any) -> "StandIn":  # e.g. numpy scalar reconstructors
        return self


def _encode(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise CheckpointError("refused: _codecs.encode called with non-text arguments")
    return text.encode(encoding)


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *args: Any) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data: torch.Tensor, *args: Any) -> torch.Tensor:
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Never imports: returns stand-ins for model classes and refuses every other global."""

    def __init__(self, file, storages: dict[str, bytes], source: str):
        super().__init__(file)
        self.storages, self.source, self.stand_ins = storages, source, {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        if module == "_codecs" and name == "encode":  # how protocol 2 stores bytes: str -> bytes only
            return _encode
        if module == "torch" and name in DTYPES:
            return ("storage-type", DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "TypedStorage"):
            return ("storage-type", torch.uint8)
        full = f"{module}.{name}"
        if any(full.startswith(p) or module == p.rstrip(".") for p in STAND_IN_PREFIXES):
            return self.stand_ins.setdefault(full, type(name, (StandIn,), {"qualname": full}))
        raise CheckpointError(f"{self.source}: refused: the pickle references {full}, which could run code "
                              f"when loaded; nothing was executed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r}")
        _, kind, key, _location, _numel = pid[:5]
        dtype = kind[1] if isinstance(kind, tuple) else torch.uint8
        raw = self.storages.get(str(key))
        if raw is None:
            raise CheckpointError(f"{self.source}: storage {key} missing from the archive (truncated file?)")
        return torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def read_official(path: str | Path) -> Any:
    """The unpickled object graph of a torch zip checkpoint, with stand-ins for all classes."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint not found or empty")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = next((n for n in names if n.endswith("data.pkl")), None)
            if pkl is None:
                raise CheckpointError(f"{path}: no data.pkl inside: not a torch checkpoint")
            prefix = pkl[: -len("data.pkl")]
            storages = {n[len(prefix) + 5:]: z.read(n) for n in names if n.startswith(prefix + "data/")}
            return RestrictedUnpickler(io.BytesIO(z.read(pkl)), storages, str(path)).load()
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a zip-format torch checkpoint (legacy or corrupt file)") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the pickle: {e}") from None


def module_tensors(obj: Any, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """A stand-in nn.Module tree's tensors in torch's state_dict order (params, buffers, children)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    state = getattr(obj, "__dict__", {})
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for key in ("_parameters", "_buffers"):
        for name, t in (state.get(key) or {}).items():
            if isinstance(t, torch.Tensor) and not (key == "_buffers" and name in non_persistent):
                out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_tensors(child, f"{prefix}{name}."))
    return out


def official_state(obj: Any, source: str) -> tuple["OrderedDict[str, torch.Tensor]", list[str] | None]:
    """The tensors (EMA when present) and class names of an official checkpoint dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a checkpoint dict with 'model' or 'ema'")
    net = obj.get("ema") or obj.get("model")
    if net is None:
        raise CheckpointError(f"{source}: neither 'ema' nor 'model' holds a network")
    tensors = net if isinstance(net, dict) else module_tensors(net)
    names = getattr(net, "__dict__", {}).get("names")
    return tensors, list(names.values()) if isinstance(names, dict) else names


def map_by_order(ours: "OrderedDict[str, torch.Tensor]", theirs: "OrderedDict[str, torch.Tensor]",
                 source: str) -> dict[str, torch.Tensor]:
    """Pair tensors in order, checking every shape; one clear error at the first disagreement."""
    skip = lambda k: k.endswith("num_batches_tracked")  # noqa: E731 - optional in older files
    a = [(k, v) for k, v in ours.items() if not skip(k)]
    b = [(k, v) for k, v in theirs.items() if not skip(k)]
    if len(a) != len(b):
        raise CheckpointError(f"{source}: has {len(b)} tensors but the cfg needs {len(a)}: wrong --cfg?")
    out = {}
    for (k, v), (k2, v2) in zip(a, b):
        if tuple(v.shape) != tuple(v2.shape):
            raise CheckpointError(f"{source}: tensor {k2} {tuple(v2.shape)} does not fit our {k} {tuple(v.shape)}")
        out[k] = v2.to(v.dtype)
    return out


# Head tensors an official file may hold that have no trained counterpart here: YOLOv5-style
# anchor grids, and YOLOR's ImplicitM, which the official ISegment/IDetect forward never applies
# (so the faithful conversion is our ImplicitM at exactly 1).
_HEAD_EXTRAS = ("anchor_grid", "im.")


def _head_prefix(keys, what: str, source: str) -> str:
    """'model.105.' for the layer that holds the anchors (anchor heads) or the last layer."""
    anchor = [k for k in keys if k.endswith(".anchors")]
    last = anchor[-1] if anchor else next(reversed(list(keys)))
    parts = last.split(".")
    if len(parts) < 3:
        raise CheckpointError(f"{source}: cannot find the {what} head in tensor names like '{last}'")
    return ".".join(parts[:2]) + "."


def map_head(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], strides: torch.Tensor,
             source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Head tensors by role (m.i, ia.i, proto.*, cv*/box/cls ...), keyed without the layer prefix.
    Official anchors are stored in grid units (no `strides` buffer): scaled to pixels here."""
    official = "strides" not in theirs  # our own files carry the strides buffer
    out, notes = {}, []
    for key, ref in ours.items():
        if key == "strides":
            continue
        if key == "anchors" and "anchors" in theirs:
            a = theirs["anchors"].float()
            out[key] = a * strides.view(-1, 1, 1).to(a) if official else a
        elif key in theirs and tuple(theirs[key].shape) == tuple(ref.shape) and not (official and key.startswith("im.")):
            out[key] = theirs[key]
        elif key.startswith("im."):
            out[key] = torch.ones_like(ref)
            if key.endswith("0.implicit"):
                notes.append("ImplicitM set to 1 (the official head never applies it)")
        else:
            got = tuple(theirs[key].shape) if key in theirs else "missing"
            raise CheckpointError(f"{source}: head tensor {key}: ours {tuple(ref.shape)}, the file's {got}: wrong --cfg?")
    unused = [k for k in theirs if k not in out and k != "strides" and not k.startswith(_HEAD_EXTRAS)]
    if unused:
        raise CheckpointError(f"{source}: head tensors {unused[:4]} have no place in this cfg's head: wrong --cfg?")
    return out, notes


def convert(src: str | Path, cfg: str | Path, out: str | Path, nc: int | None = None) -> Path:
    """The body is matched in layer and parameter order (every shape checked), the head by role."""
    from models.model import build_model

    obj = read_official(src)
    theirs, names = official_state(obj, str(src))
    model = build_model(cfg, num_classes=nc or (len(names) if names else None))
    state = model.state_dict()
    ours_prefix = f"layers.{len(model.layers) - 1}."
    theirs_prefix = _head_prefix(theirs.keys(), "file's", str(src))
    body = map_by_order(OrderedDict((k, v) for k, v in state.items() if not k.startswith(ours_prefix)),
                        OrderedDict((k, v) for k, v in theirs.items() if not k.startswith(theirs_prefix)), str(src))
    head, notes = map_head({k[len(ours_prefix):]: v for k, v in state.items() if k.startswith(ours_prefix)},
                           {k[len(theirs_prefix):]: v for k, v in theirs.items() if k.startswith(theirs_prefix)},
                           model.stride, str(src))
    mapped = {**body, **{ours_prefix + k: v.to(state[ours_prefix + k].dtype) for k, v in head.items()}}
    model.load_state_dict({**state, **mapped})
    if "anchors" in head:  # the config rebuilds the model: keep the file's anchors there too
        model.yaml["anchors"] = [[round(float(v), 3) for v in level.flatten()] for level in head["anchors"]]
        for row in model.yaml["head"]:
            if row[2] == "AnchorHead":
                row[3][1] = model.yaml["anchors"]
    for note in notes:
        print(f"convert: {note}", file=sys.stderr)
    names = list(names) if names and len(names) == model.nc else [str(i) for i in range(model.nc)]
    ckpt = {"model": model.state_dict(), "ema": None, "epoch": -1, "best_fitness": -1.0,
            "config": {"model": model.yaml, "nc": model.nc, "names": names,
                       "category_ids": COCO80_IDS if model.nc == 80 else list(range(model.nc)),
                       "img_size": 640, "converted_from": str(src)},
            "version": FORMAT_VERSION, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return save_checkpoint(ckpt, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="official .pt file")
    p.add_argument("--cfg", required=True, help="our cfg with the same architecture")
    p.add_argument("--out", required=True, help="output gradpath checkpoint")
    p.add_argument("--nc", type=int, default=None, help="classes (default: from the file's names)")
    args = p.parse_args(argv)
    try:
        out = convert(args.src, args.cfg, args.out, args.nc)
    except (CheckpointError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
