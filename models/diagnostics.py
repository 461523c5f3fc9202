"""Training diagnostics: gradient norms per top-level layer (stage) of a parsed model."""
from __future__ import annotations

import math

from torch import nn


def stage_grad_norms(model: nn.Module) -> dict[str, float]:
    """{"layer_<i>": L2 norm of layer i's gradients, ..., "nonfinite": 1.0 if any gradient is NaN/inf}.

    Call after backward (and after unscaling under AMP)."""
    out: dict[str, float] = {}
    bad = False
    layers = getattr(model, "layers", None)
    groups = [(f"layer_{i:02d}", m) for i, m in enumerate(layers)] if layers is not None else [("model", model)]
    for name, module in groups:
        sq = 0.0
        for p in module.parameters():
            if p.grad is not None:
                s = float(p.grad.detach().float().pow(2).sum())
                bad |= not math.isfinite(s)
                sq += s
        out[name] = math.sqrt(sq) if math.isfinite(sq) else float("nan")
    out["nonfinite"] = float(bad)
    return out
