"""Basic blocks named in the cfgs: conv units (Conv, RepConv), pooling, resampling, SPPF, YOLOR
implicit knowledge and the mask prototypes. The paper's gradient-path blocks (residual/PRN, CSP,
ELAN, VoVNet) are in models/stages.py. Every block takes its input channels first."""
from __future__ import annotations

import torch
from torch import nn


def make_act(name: str | None) -> nn.Module:
    acts = {"silu": nn.SiLU, "lrelu": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU, None: nn.Identity,
            "none": nn.Identity}
    if name not in acts:
        raise ValueError(f"unknown activation '{name}' (known: silu, lrelu, relu, none)")
    return acts[name]()


def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the conv that equals `weight` followed by `bn` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + activation; `fuse()` folds the BN into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: str | None = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        if isinstance(self.bn, nn.Identity):
            return
        w, b = fold_bn(self.conv.weight, self.bn)
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                          self.conv.stride, self.conv.padding, groups=self.conv.groups, bias=True).to(w.device)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.conv, self.bn = fused, nn.Identity()


class RepConv(nn.Module):
    """Re-parameterisable conv (RepVGG): in training a 3x3 conv+BN, a 1x1 conv+BN and, when the
    shapes allow, an identity BN are summed before the activation; `fuse()` folds the three into one
    3x3 conv with bias, so inference costs a single conv and the outputs are unchanged."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act: str | None = "silu"):
        super().__init__()
        if k != 3:
            raise ValueError(f"RepConv is defined for 3x3 kernels, got {k}")
        self.c1, self.c2, self.s = c1, c2, s
        self.dense = Conv(c1, c2, 3, s, act=None)
        self.one = Conv(c1, c2, 1, s, p=0, act=None)
        self.identity = nn.BatchNorm2d(c1, eps=1e-3, momentum=0.03) if c1 == c2 and s == 1 else None
        self.act = make_act(act)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.dense(x) + self.one(x)
        return self.act(y if self.identity is None else y + self.identity(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if self.fused is not None:
            return
        w3, b3 = fold_bn(self.dense.conv.weight, self.dense.bn)
        w1, b1 = fold_bn(nn.functional.pad(self.one.conv.weight, [1, 1, 1, 1]), self.one.bn)
        w, b = w3 + w1, b3 + b1
        if self.identity is not None:
            eye = torch.zeros_like(w3)
            eye[torch.arange(self.c1), torch.arange(self.c1), 1, 1] = 1.0
            wi, bi = fold_bn(eye, self.identity)
            w, b = w + wi, b + bi
        self.fused = nn.Conv2d(self.c1, self.c2, 3, self.s, 1, bias=True).to(w.device)
        self.fused.weight.copy_(w)
        self.fused.bias.copy_(b)
        del self.dense, self.one, self.identity
        self.dense = self.one = self.identity = None


class Concat(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.dim)


class MaxPoolDown(nn.Module):
    """2x2 max-pool downsampling (channels unchanged)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = nn.MaxPool2d(k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class MaxPoolSame(nn.Module):
    """k x k max-pool at stride 1, padded to keep the size (YOLOv7-tiny's SPP branches)."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SpaceToDepth(nn.Module):
    """2x2 space-to-depth (YOLOv7-W6's ReOrg stem): (B,C,H,W) -> (B,4C,H/2,W/2), the four pixel
    phases in the order top-left, bottom-left, top-right, bottom-right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class Sum(nn.Module):
    """Elementwise sum of its inputs (YOLOv7-E6E adds two parallel ELAN blocks)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Upsample(nn.Module):
    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast, chained 5x5 max-pools = 5/9/13 windows)."""

    def __init__(self, c1: int, c2: int, k: int = 5, act: str = "silu"):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c_ * 4, c2, 1, act=act)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class ImplicitA(nn.Module):
    """YOLOR implicit knowledge, added to a feature map."""

    def __init__(self, channels: int, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.normal_(self.implicit, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """YOLOR implicit knowledge, multiplied into a feature map."""

    def __init__(self, channels: int, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


class Proto(nn.Module):
    """Mask prototypes: 3x3 conv, 2x nearest upsample (stride 8 -> 4), 3x3 conv, 1x1 conv to nm."""

    def __init__(self, c1: int, c_: int = 256, nm: int = 32, act: str = "silu"):
        super().__init__()
        self.cv1 = Conv(c1, c_, 3, act=act)
        self.up = Upsample(2)
        self.cv2 = Conv(c_, c_, 3, act=act)
        self.cv3 = Conv(c_, nm, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.up(self.cv1(x))))
