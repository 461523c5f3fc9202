"""Building blocks named in the cfgs: conv units, residual/PRN/CSP/ELAN aggregation, SPP, implicit
knowledge. Every block takes its input channels first (filled in by the parser)."""
from __future__ import annotations

import torch
from torch import nn


def make_act(name: str | None) -> nn.Module:
    acts = {"silu": nn.SiLU, "lrelu": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU, None: nn.Identity,
            "none": nn.Identity}
    if name not in acts:
        raise ValueError(f"unknown activation '{name}' (known: silu, lrelu, relu, none)")
    return acts[name]() if name not in ("lrelu",) else acts[name]()


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + activation; `fuse()` folds the BN into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: str | None = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        if isinstance(self.bn, nn.Identity):
            return
        w, bn = self.conv.weight, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                          self.conv.stride, self.conv.padding, groups=self.conv.groups, bias=True).to(w.device)
        fused.weight.copy_(w * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


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


class Upsample(nn.Module):
    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


class ELAN(nn.Module):
    """Efficient layer aggregation: two 1x1 branches (c_), a chain of n 3x3 convs (c_chain wide);
    the branches and every `tap`-th chain output are concatenated and fused by a 1x1 transition.
    "Stack in computational block" = a longer chain with the same single transition."""

    def __init__(self, c1: int, c2: int, c_: int, n: int = 2, tap: int = 1, c_chain: int | None = None,
                 act: str = "silu"):
        super().__init__()
        c_chain = c_chain or c_
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, act=act)
        self.chain = nn.ModuleList(Conv(c_ if i == 0 else c_chain, c_chain, 3, act=act) for i in range(n))
        self.tap = tap
        n_taps = len(range(tap - 1, n, tap))
        self.transition = Conv(2 * c_ + n_taps * c_chain, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(x)
        outs = [self.cv1(x), y]
        for i, conv in enumerate(self.chain):
            y = conv(y)
            if (i + 1) % self.tap == 0:
                outs.append(y)
        return self.transition(torch.cat(outs, 1))


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
