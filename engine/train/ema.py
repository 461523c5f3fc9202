"""Exponential moving average of model weights (the EMA model is what gets validated and saved)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """ema = d * ema + (1 - d) * model, with d ramping up as 0.9999 * (1 - exp(-updates / 2000))."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        self.skip: frozenset[str] = frozenset()  # state_dict keys that never change (--freeze): not averaged
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if k in self.skip:
                continue  # d * x + (1 - d) * x need not round back to x
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])
