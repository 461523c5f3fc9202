"""--freeze: layers that keep their weights. Their parameters take no gradient (so no optimizer
state and no weight decay either: the optimizer never sees them) and their BatchNorm layers stay
in eval mode, so the running statistics are not moved by the new data."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from engine.train.hooks import Hook
from utils.errors import ConfigError

LOG = logging.getLogger("gradpath.train")


def frozen_layers(spec: tuple[int, ...] | str, model: nn.Module) -> list[int]:
    """The layer indices `spec` names: () none; (N,) the first N, as YOLOv5/YOLOv7 read one
    number; several numbers those layers; "backbone" the cfg's backbone rows (model.yaml)."""
    n = len(model.layers)
    if spec == "backbone":
        return list(range(len(model.yaml["backbone"])))
    spec = tuple(spec)
    if len(spec) == 1:
        if spec[0] > n - 1:
            raise ConfigError(f"--freeze {spec[0]}: the model has {n} layers (its head is layer {n - 1} and must "
                              f"train); at most {n - 1}")
        return list(range(spec[0]))
    bad = [i for i in spec if i >= n]
    if bad:
        raise ConfigError(f"--freeze: no layer {bad[0]}: the model has {n} layers (0..{n - 1})")
    if n - 1 in spec and len(set(spec)) == n:
        raise ConfigError(f"--freeze {' '.join(map(str, spec))}: every layer frozen: nothing would train")
    return sorted(set(spec))


@dataclass(frozen=True)
class Frozen:
    """What --freeze froze: layer indices and the parameter names in them."""

    layers: tuple[int, ...]
    params: tuple[str, ...]
    count: int  # parameters (elements)

    def describe(self, n_layers: int) -> str:
        if not self.layers:
            return ""
        shown = _ranges(self.layers)
        return (f"frozen: {len(self.layers)} of {n_layers} layers ({shown}), {self.count:,} parameters in "
                f"{len(self.params)} tensors; their BatchNorm statistics kept")


def _ranges(layers: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2, 5'"""
    parts, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + (None,)):
        if b != a + 1:
            parts.append(f"{start}-{a}" if a > start else str(a))
            start = b
    return ", ".join(parts)


def freeze(model: nn.Module, layers: list[int]) -> Frozen:
    """Stop gradients of `layers` (model.layers indices); call before the optimizer is built."""
    names, count = [], 0
    for i in layers:
        for name, p in model.layers[i].named_parameters():
            p.requires_grad_(False)
            names.append(f"layers.{i}.{name}")
            count += p.numel()
    return Frozen(tuple(layers), tuple(names), count)


def frozen_norms(model: nn.Module, layers: tuple[int, ...]) -> list[nn.Module]:
    return [m for i in layers for m in model.layers[i].modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


class FreezeHook(Hook):
    """Puts the frozen layers' BatchNorm back in eval mode each time the loop sets train mode."""

    def __init__(self, norms: list[nn.Module]):
        self.norms = norms

    def before_epoch(self, trainer) -> None:
        for m in self.norms:
            m.eval()
