"""Fine-tuning onto the dataset's classes: the --weights head's prediction rows that still mean the
same are kept. Box, objectness and mask-coefficient rows always; the class rows of each class name
the dataset shares with the checkpoint; only the rows of new classes keep the fresh initialisation.

Row layouts: AnchorHead's prediction convs (m, aux; and ImplicitM along its channel axis) hold, per
anchor, [x, y, w, h, objectness, nc class scores, nm mask coefficients]; AnchorFreeHead's class
branch ends in a conv of nc rows (its box and coefficient branches do not depend on nc)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from engine.checkpoint import transfer_weights
from models.heads import AnchorFreeHead, AnchorHead, HeadBase

_ANCHOR_ROWS = re.compile(r"^(m|aux)\.\d+\.(weight|bias)$|^im\.\d+\.implicit$")
_CLASS_ROWS = re.compile(r"^cls\.\d+\.2\.(weight|bias)$")


@dataclass(frozen=True)
class Transfer:
    """What --weights gave the model: tensors copied whole, and the head's class rows."""

    loaded: int  # tensors copied whole
    total: int
    differ: str  # the layers whose tensors differ, one line ('' when none)
    carried: tuple[str, ...] = ()  # dataset classes whose rows came from the checkpoint
    new: tuple[str, ...] = ()  # dataset classes whose rows start afresh
    remapped: int = 0  # head tensors filled row by row
    masks: bool = False  # mask-coefficient rows came from the checkpoint too

    def describe(self) -> str:
        """The log line about the classes ('' when the head was copied whole or not at all)."""
        if not self.remapped:
            return ""
        shown = lambda names: ", ".join(names[:12]) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")  # noqa: E731
        kept = "box, objectness and mask coefficients" if self.masks else "box and objectness"
        text = f"head rows carried over: {kept}; classes {len(self.carried)} of {len(self.carried) + len(self.new)}"
        text += f" ({shown(self.carried)})" if self.carried else ""
        return text + (f"; new, initialised afresh: {shown(self.new)}" if self.new else "")


def _key(name: str) -> str:
    return str(name).strip().lower()


def transfer_with_classes(model: nn.Module, state: dict[str, torch.Tensor], old_names: Sequence[str] | None,
                          new_names: Sequence[str], carry: bool = True) -> Transfer:
    """transfer_weights, then the head's class-dependent tensors rebuilt row by row from the
    checkpoint's (old_names: its classes in order; None when it does not record them)."""
    head: HeadBase = model.layers[-1]
    prefix = f"layers.{len(model.layers) - 1}."
    fresh = {k[len(prefix):]: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}
    loaded, total, differ = transfer_weights(model, state)
    if not carry or not old_names:
        return Transfer(loaded, total, differ)
    same_names = [_key(n) for n in old_names] == [_key(n) for n in new_names]
    index = {}
    for j, n in enumerate(old_names):
        index.setdefault(_key(n), j)
    sources = [index.get(_key(n), -1) for n in new_names]
    rebuilt = {}
    for name, own in fresh.items():
        old = state.get(prefix + name)
        if old is None or (same_names and old.shape == own.shape):
            continue  # copied whole (or absent) already
        rows = _row_sources(head, name, own, old, sources, len(old_names), state.get(prefix + "anchors"))
        if rows is not None:
            rebuilt[prefix + name] = _fill(own, old, *rows)
    if rebuilt:
        model.load_state_dict(rebuilt, strict=False)
    carried = tuple(n for n, s in zip(new_names, sources) if s >= 0)
    return Transfer(loaded, total, differ, carried, tuple(n for n, s in zip(new_names, sources) if s < 0),
                    len(rebuilt), _masks_carried(head, state, prefix, len(old_names)))


def _masks_carried(head: HeadBase, state: dict[str, torch.Tensor], prefix: str, old_nc: int) -> bool:
    """Whether the checkpoint's mask-coefficient rows fit the model's (the same number of them)."""
    if not head.nm:
        return False
    if isinstance(head, AnchorHead):
        old = state.get(prefix + "m.0.bias")
        return old is not None and old.shape[0] == head.na * (5 + old_nc + head.nm)
    old = state.get(prefix + "coef.0.2.bias")
    return old is not None and old.shape[0] == head.nm


def _row_sources(head: HeadBase, name: str, own: torch.Tensor, old: torch.Tensor, sources: list[int],
                 old_nc: int, old_anchors: torch.Tensor | None) -> tuple[int, list[int]] | None:
    """(axis, the checkpoint row for each of the model's rows or -1) for a class-dependent head
    tensor whose other dimensions match the checkpoint's; None for any other tensor."""
    if isinstance(head, AnchorHead) and _ANCHOR_ROWS.match(name):
        axis = 1 if name.endswith("implicit") else 0
        na, nm = head.na, head.nm
        if old.shape[axis] % na or (old_anchors is not None and old_anchors.shape != head.anchors.shape):
            return None  # other anchors: the rows mean something else
        old_no = old.shape[axis] // na
        old_nm = old_no - 5 - old_nc
        if old_nm < 0:
            return None
        per_anchor = list(range(5)) + [5 + s if s >= 0 else -1 for s in sources]
        per_anchor += [5 + old_nc + j if old_nm == nm else -1 for j in range(nm)]
        rows = [a * old_no + r if r >= 0 else -1 for a in range(na) for r in per_anchor]
    elif isinstance(head, AnchorFreeHead) and _CLASS_ROWS.match(name):
        axis = 0
        if old.shape[0] != old_nc:
            return None
        rows = list(sources)
    else:
        return None
    if own.ndim != old.ndim or any(a != b for d, (a, b) in enumerate(zip(own.shape, old.shape)) if d != axis):
        return None  # e.g. a class branch whose width depends on nc: nothing to carry
    return axis, rows


def _fill(own: torch.Tensor, old: torch.Tensor, axis: int, rows: list[int]) -> torch.Tensor:
    """`own` (the fresh initialisation) with row k taken from old's row rows[k] wherever that is >= 0."""
    out = own.clone()
    dst = torch.tensor([k for k, r in enumerate(rows) if r >= 0], dtype=torch.long)
    src = torch.tensor([r for r in rows if r >= 0], dtype=torch.long)
    if len(dst):
        out.index_copy_(axis, dst, old.to(out.dtype).index_select(axis, src))
    return out
