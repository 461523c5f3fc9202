"""Training hooks: what runs around the loop's steps without being the loop."""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from models.summary import stage_label


def stage_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradients per top-level stage (after backward), plus 'total' and
    'nonfinite' (1.0 when any gradient holds inf/nan). Parameters without .grad are skipped."""
    names, grads = [], []
    for n, p in model.named_parameters():
        if p.grad is not None:
            names.append(stage_label(model, n))
            grads.append(p.grad.detach())
    if not grads:
        return {"total": 0.0, "nonfinite": 0.0}
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).cpu().tolist()
    per_stage: dict[str, list[float]] = defaultdict(list)
    for stage, v in zip(names, norms):
        per_stage[stage].append(v)
    out = {stage: math.hypot(*vs) for stage, vs in per_stage.items()}
    out["total"] = math.hypot(*norms)
    out["nonfinite"] = float(not all(math.isfinite(v) for v in norms))
    return out
