"""Random-weight models score every box alike (near ties everywhere), which makes detections
meaningless to compare. spread_head rescales each output channel of the head's prediction convs,
measured on one real image, to logits of a chosen mean and spread per role (box, objectness,
class, mask coefficient): a few tens of confident, well-separated boxes per image, varied sizes
and masks, as a trained model gives."""
from __future__ import annotations

import torch
from torch import nn

# (mean, std) of the logits. Boxes vary little: a random network's most confident positions are
# its most extreme features, whose box logits would otherwise be extreme too (slivers of no area).
ROLES = {"box": (0.0, 0.3), "obj": (-1.0, 1.5), "cls": (-4.0, 1.2), "coef": (0.0, 1.5), "proto": (0.0, 2.0)}


def prediction_convs(model: nn.Module) -> list[tuple[nn.Conv2d, list[str]]]:
    """Each prediction conv with the role of each of its output channels."""
    head = model.head
    if head.kind == "anchor":
        per_anchor = ["box"] * 4 + ["obj"] + ["cls"] * head.nc + ["coef"] * head.nm
        return [(c, per_anchor * head.na) for c in head.m]
    out = [(b[-1], ["box"] * b[-1].out_channels) for b in head.box]
    out += [(b[-1], ["cls"] * b[-1].out_channels) for b in head.cls]
    return out + [(b[-1], ["coef"] * b[-1].out_channels) for b in (head.coef or [])]


def proto_conv(model: nn.Module) -> list[tuple[nn.Conv2d, list[str]]]:
    """The prototypes' last conv (its BatchNorm in eval mode passes the spread on): random
    prototypes are near zero, which leaves every mask logit near 0 and every mask a coin toss."""
    proto = model.head.proto
    return [] if proto is None else [(proto.cv3.conv, ["proto"] * proto.cv3.conv.out_channels)]


@torch.no_grad()
def spread_head(model: nn.Module, x: torch.Tensor, **roles: tuple[float, float]) -> nn.Module:
    """model: eval mode, unfused; x: (1,3,H,W) a real image 0-1; roles: (mean, std) overrides of
    ROLES. Changes the model in place."""
    roles_ = {**ROLES, **roles}
    convs = prediction_convs(model) + proto_conv(model)
    outs = {}
    hooks = [c.register_forward_hook(lambda m, i, o: outs.__setitem__(m, o)) for c, _ in convs]
    model(x)
    for h in hooks:
        h.remove()
    for c, kinds in convs:
        o = outs[c].transpose(0, 1).flatten(1)  # (C, positions)
        mean, std = (torch.tensor([roles_[r][k] for r in kinds]) for k in (0, 1))
        scale = std / o.std(1).clamp(min=1e-6)
        c.weight.mul_(scale.view(-1, 1, 1, 1))
        if c.bias is not None:
            c.bias.copy_(mean + (c.bias - o.mean(1)) * scale)
    return model
