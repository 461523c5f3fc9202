"""Catching GPU placement bugs on a CPU-only machine.

A tensor that gradpath's code creates without `device=` lands on the CPU; with the model and data
on a GPU that is a device-mismatch error (or a silent host-to-device copy) that only a GPU shows.
`StrictDevice` is a TorchFunctionMode that rejects such factory calls when they come from this
repository's code, wherever the inputs live, so the bug fails loudly here too. Calls made inside
torch or third-party libraries (torchvision, the optimizers) are theirs to get right and pass.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
TORCH_DIR = str(Path(torch.__file__).parent) + "/"  # not torchvision/
SITE = ("site-packages", "dist-packages")

# torch functions that make a new tensor and take `device=`; without it they make a CPU tensor
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.empty_strided, torch.full, torch.arange, torch.linspace,
             torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor,
             torch.as_tensor, torch.scalar_tensor, torch.from_numpy}


class PlacementError(AssertionError):
    """A tensor created without an explicit device by the repository's code."""


def _copies_a_tensor(func, args) -> bool:
    """torch.as_tensor(t) and torch.tensor(t) keep a tensor's device: not a placement bug."""
    return func in (torch.as_tensor, torch.tensor) and bool(args) and isinstance(args[0], torch.Tensor)


def _repo_caller(root: str) -> str | None:
    """'file:line' of the first caller outside torch and this module, when it is repository code."""
    root = root.rstrip("/") + "/"
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(TORCH_DIR) or path == __file__):
            if path.startswith(root) and not any(s in path for s in SITE):
                return f"{Path(path).relative_to(root)}:{frame.f_lineno}"
            return None
        frame = frame.f_back
    return None


class StrictDevice(TorchFunctionMode):
    """with StrictDevice(): ... raises PlacementError at the first device-less factory call of
    repository code. `calls` counts the factory calls it let through (with a device)."""

    def __init__(self, root: Path = ROOT):
        super().__init__()
        self.root, self.calls = str(root), 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and not _copies_a_tensor(func, args):
            where = _repo_caller(self.root)
            if where is not None:
                raise PlacementError(f"{where}: torch.{func.__name__}() without device= "
                                     "(a CPU tensor when the model and data are on a GPU)")
        elif func in FACTORIES:
            self.calls += 1
        return func(*args, **kwargs)
