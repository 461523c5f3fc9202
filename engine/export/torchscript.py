"""TorchScript: the fused model traced on the check input, its raw outputs as a tuple of tensors
(predictions[, protos]), the export metadata as the extra file metadata.json."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.checkpoint import ModelMeta
from engine.export.files import staged_file


class TensorsOnly(nn.Module):
    """(pred, proto-or-None) -> (pred,) or (pred, proto): tracing keeps tensors only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x: torch.Tensor):
        pred, proto = self.model(x)
        return (pred,) if proto is None else (pred, proto)


def write_torchscript(model: nn.Module, x: torch.Tensor, meta: ModelMeta, dest: Path,
                      check: Callable[[Path], str]) -> str:
    extra = {"metadata.json": json.dumps(meta.to_strings())}
    with staged_file(dest) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # tracer warnings about shape-dependent python values; torch.jit's deprecation notices
            # (TorchScript is the format asked for)
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(TensorsOnly(model), x, strict=False, check_trace=False))
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        return check(tmp)
