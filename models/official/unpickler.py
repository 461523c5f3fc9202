"""Read an official YOLOv5 / YOLOv7 checkpoint (a pickled whole-model object) without importing or
running any of its code.

The pickle is read by a restricted unpickler: classes under the official packages become inert
stand-ins that only record their state, tensors are rebuilt from the archive's raw storages, and any
other global (os.system, builtins.eval, subprocess, ...) is refused before anything runs. Official
segmentation heads pickle `getattr(<Detect class>, 'forward')`; getattr is honoured only on a
stand-in, where it yields another inert stand-in, never a real attribute.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError

# Namespaces whose classes are replaced by inert stand-ins (model code, containers, options).
STAND_IN_PREFIXES = ("models.", "utils.", "torch.nn.modules.", "torch.nn.parameter", "__main__", "argparse",
                     "pathlib", "numpy", "torch.cuda.amp", "torch.optim", "collections.defaultdict")
DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
          "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
          "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
          "BoolStorage": torch.bool}
SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex}  # plain data only


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


def _is_stand_in(obj: Any) -> bool:
    return (isinstance(obj, type) and issubclass(obj, StandIn)) or isinstance(obj, StandIn)


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

    def _stand_in(self, full: str) -> type:
        return self.stand_ins.setdefault(full, type(full.rsplit(".", 1)[-1], (StandIn,), {"qualname": full}))

    def _getattr(self, obj: Any, name: Any, *default: Any) -> type:
        """getattr as official files use it (a method of a model class): allowed on stand-ins only,
        and the answer is another stand-in, so no real attribute or callable is ever reached."""
        if not _is_stand_in(obj) or not isinstance(name, str):
            what = getattr(obj, "__name__", type(obj).__name__)
            raise CheckpointError(f"{self.source}: refused: the pickle calls getattr({what}, {name!r}), which could "
                                  f"reach code; nothing was executed")
        return self._stand_in(f"{obj.qualname}.{name}")

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        if module in ("builtins", "__builtin__") and name == "getattr":
            return self._getattr
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
            return self._stand_in(full)
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


def read_pickle(path: str | Path) -> Any:
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


@dataclass
class OfficialLayer:
    """One row of the official model: its class name (e.g. 'C3', 'IDetect') and its stand-in state."""

    index: int
    kind: str
    state: dict = field(repr=False)


@dataclass
class OfficialModel:
    """What an official checkpoint holds: its cfg dict (the `yaml` attribute), class names, strides,
    the tensors by official state_dict key ('model.<i>.<path>'), and its layers' classes."""

    source: str
    cfg: dict
    names: list[str]
    stride: list[float]
    tensors: "OrderedDict[str, torch.Tensor]"
    layers: list[OfficialLayer]
    bn_eps: set[float]


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


def _bn_eps(obj: Any) -> set[float]:
    state = getattr(obj, "__dict__", {})
    found = {float(state["eps"])} if type(obj).__name__.startswith("BatchNorm") and "eps" in state else set()
    for child in (state.get("_modules") or {}).values():
        if child is not None:
            found |= _bn_eps(child)
    return found


def read_official(path: str | Path) -> OfficialModel:
    """An official checkpoint's model (its EMA when present, as the official loaders take it)."""
    obj, source = read_pickle(path), str(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a checkpoint dict with 'model' or 'ema'")
    net = obj.get("ema") or obj.get("model")
    if net is None:
        raise CheckpointError(f"{source}: neither 'ema' nor 'model' holds a network")
    state = getattr(net, "__dict__", {})
    cfg = state.get("yaml")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), list):
        raise CheckpointError(f"{source}: the model carries no official cfg (its 'yaml' attribute): "
                              f"not a YOLOv5/YOLOv7 checkpoint")
    seq = (state.get("_modules") or {}).get("model")
    rows = list(((getattr(seq, "__dict__", {}) or {}).get("_modules") or {}).values())
    layers = [OfficialLayer(i, type(m).__name__, getattr(m, "__dict__", {})) for i, m in enumerate(rows)]
    names = state.get("names")
    names = [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else [str(n) for n in names or []]
    stride = state.get("stride")
    stride = [float(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else []
    return OfficialModel(source, cfg, names, stride, module_tensors(net), layers, _bn_eps(net))


def is_official_checkpoint(path: str | Path) -> bool:
    """True when the file pickles official model classes (models.yolo.*), which weights_only refuses."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return pkl is not None and b"models.yolo" in z.read(pkl)
    except (zipfile.BadZipFile, OSError):
        return False
