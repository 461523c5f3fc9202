"""Optimizer with three parameter groups, the LR schedule and warmup."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(weights with decay, normalisation weights, biases and implicit vectors): no decay on the last two."""
    decay, no_decay_norm, biases = [], [], []
    norm_types = tuple(getattr(nn, n) for n in dir(nn) if "Norm" in n and isinstance(getattr(nn, n), type))
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, norm_types):
                no_decay_norm.append(p)
            elif p.ndim <= 1 or type(module).__name__.startswith("Implicit"):
                biases.append(p)  # implicit-knowledge vectors act like biases: no decay
            else:
                decay.append(p)
    return decay, no_decay_norm, biases


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, norm, biases = parameter_groups(model)
    name = name.lower()
    if name == "sgd":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "adam":  # YOLOv7's --adam: the decay group's weight decay is Adam's L2 term
        opt = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "adamw":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"--optimizer {name}: expected SGD, Adam or AdamW")
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": norm, "weight_decay": 0.0})
    return opt


def lr_lambda(epochs: int, lrf: float, schedule: str = "cosine") -> Callable[[int], float]:
    """Epoch -> LR factor from 1 towards lrf. "cosine": a half cosine over `epochs`, the last epoch
    just above lrf (YOLOv7's default, YOLOv5's --cos-lr); "linear": a straight line reaching lrf at
    the last epoch (YOLOv7's --linear-lr); "linear-yolov5": a straight line reaching lrf one epoch
    past the last (YOLOv5's default, so the official YOLOv5 recipe replays exactly)."""
    if schedule == "linear":
        return lambda e: (1 - e / max(epochs - 1, 1)) * (1.0 - lrf) + lrf
    if schedule == "linear-yolov5":
        return lambda e: (1 - e / max(epochs, 1)) * (1.0 - lrf) + lrf
    if schedule == "cosine":
        return lambda e: ((1 - math.cos(e * math.pi / max(epochs, 1))) / 2) * (lrf - 1) + 1
    raise ValueError(f"--lr-schedule {schedule}: must be one of cosine, linear, linear-yolov5")


def warmup_iterations(hyp, batches_per_epoch: int) -> int:
    """hyp: engine.config.Hyp. Warmup length in batches: warmup_epochs of them, but at least warmup_min_iters, so that a
    short run on a small dataset (a fine-tune) still ramps its LR over as many optimizer steps
    as a long one does instead of reaching lr0 within a few steps."""
    return max(round(hyp.warmup_epochs * batches_per_epoch), int(hyp.warmup_min_iters))


def accumulation(it: int, n_warmup: int, accumulate: int) -> int:
    """Batches per optimizer step at global iteration `it`: from 1 up to `accumulate` (nominal
    batch / batch size) over the warmup, then `accumulate`."""
    if it >= n_warmup:
        return accumulate
    return max(1, round(float(np.interp(it, [0, n_warmup], [1, accumulate]))))


def warmup(optimizer: torch.optim.Optimizer, it: int, n_warmup: int, epoch_factor: float, hyp) -> None:
    """Linear warmup over the first n_warmup iterations: the bias group falls from warmup_bias_lr,
    the others rise from 0, and momentum rises from warmup_momentum."""
    for j, group in enumerate(optimizer.param_groups):
        start = hyp.warmup_bias_lr if j == 0 else 0.0
        group["lr"] = float(np.interp(it, [0, n_warmup], [start, group["initial_lr"] * epoch_factor]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(it, [0, n_warmup], [hyp.warmup_momentum, hyp.momentum]))
        elif "betas" in group:
            b1 = float(np.interp(it, [0, n_warmup], [hyp.warmup_momentum, hyp.momentum]))
            group["betas"] = (b1, group["betas"][1])
