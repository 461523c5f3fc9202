"""The paper's gradient-path blocks, one per level of design:

- layer level: the residual `Bottleneck`, whose `partial` makes it PRN (identity added to only part
  of the channels) and whose `stop` reproduces the stop-gradient ablation of Fig. 9;
- stage level: `CSPStage` (a 50/50 cross stage partial split with the four fusion variants of
  Table 6), `C3` (YOLOv5's CSP, i.e. fusion first) and `CSPNeck` (the YOLOR-CSP neck block);
- network level: `ELAN` ("stack in computational block") and `VoVStage` (VoVNet OSA modules with
  their transitions removed, Table 4);
- and the pooling/downsampling blocks these networks use: SPP, SPPCSPC and YOLOv7's `MPDown`.
Every block takes its input channels first (the parser fills them in).
"""
from __future__ import annotations

import torch
from torch import nn

from models.blocks import Conv

STOPS = (None, "none", "identity", "block")
FUSIONS = ("both", "first", "last", "none")


class Bottleneck(nn.Module):
    """1x1 (c2*e) then 3x3 (c2) convs, plus the identity when `shortcut` and c1 == c2.

    partial < 1: PRN, the identity is added to only the first round(c2*partial) channels (same FLOPs).
    stop="identity": the identity is detached (Fig. 9a; the net trains like a plain net).
    stop="block": the computational block sees a detached input (Fig. 9b); its weights still learn,
    but gradient reaches earlier layers only through the identity, so the shortest path is 1.
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5, partial: float = 1.0,
                 stop: str | None = None, act: str = "silu"):
        super().__init__()
        if stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS[1:]}, got {stop!r}")
        if not 0 < partial <= 1:
            raise ValueError(f"partial must be in (0, 1], got {partial}")
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c_, c2, 3, act=act)
        self.add = bool(shortcut) and c1 == c2
        if stop not in (None, "none") and not self.add:
            raise ValueError("stop-gradient needs a residual (shortcut with equal in/out channels)")
        self.stop = None if stop == "none" else stop
        self.k = round(c2 * partial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x.detach() if self.stop == "block" else x))
        if not self.add:
            return y
        identity = x.detach() if self.stop == "identity" else x
        if self.k == y.shape[1]:
            return y + identity
        return torch.cat((y[:, :self.k] + identity[:, :self.k], y[:, self.k:]), 1)


class PartialResidual(Bottleneck):
    """PRN: a residual whose identity reaches only half of the channels (the PRN paper's choice)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5, partial: float = 0.5,
                 act: str = "silu"):
        super().__init__(c1, c2, shortcut, e, partial, None, act)


class CSPStage(nn.Module):
    """Cross stage partial stage: two 1x1 halves of c2*e; one goes through n residual bottlenecks.

    fusion (Table 6): "both" = transition in the partial branch and after the concatenation (CSP),
    "first" = concatenate, then transition, "last" = transition the branch, then concatenate,
    "none" = no transition. Without the final transition the output is the concatenation (2*c2*e).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, fusion: str = "both",
                 e: float = 0.5, partial: float = 1.0, stop: str | None = None, act: str = "silu"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        c_ = int(c2 * e)
        if fusion in ("last", "none") and 2 * c_ != c2:
            raise ValueError(f"fusion '{fusion}' has no final transition, so c2 ({c2}) must be 2 * c2 * e")
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, 1.0, partial, stop, act) for _ in range(n)))
        self.cv3 = Conv(c_, c_, 1, act=act) if fusion in ("both", "last") else nn.Identity()
        self.cv4 = Conv(2 * c_, c2, 1, act=act) if fusion in ("both", "first") else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv4(torch.cat((self.cv3(self.m(self.cv1(x))), self.cv2(x)), 1))


class C3(CSPStage):
    """YOLOv5's C3: the CSP stage with fusion first."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5, act: str = "silu"):
        super().__init__(c1, c2, n, shortcut, "first", e, act=act)


class CSPNeck(nn.Module):
    """YOLOR-CSP's neck block: a 1x1 transition to c2, then a CSP split into n plain (no shortcut)
    bottlenecks and a 1x1 bypass, concatenated and fused by a 1x1 transition."""

    def __init__(self, c1: int, c2: int, n: int = 1, act: str = "silu"):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(c2, c2, False, 1.0, act=act) for _ in range(n)))
        self.cv2 = Conv(c2, c2, 1, act=act)
        self.cv3 = Conv(2 * c2, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv3(torch.cat((self.m(x), self.cv2(x)), 1))


class ELAN(nn.Module):
    """Efficient layer aggregation: two 1x1 branches (c_), a chain of n 3x3 convs (c_chain wide);
    the branches and every `tap`-th chain output are concatenated and fused by a 1x1 transition.
    "Stack in computational block" = `tap` convs between taps, with the same single transition."""

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
        # concatenated newest first, as YOLOv7 does, so its trained transitions map weight for weight
        return self.transition(torch.cat(outs[::-1], 1))


class VoVStage(nn.Module):
    """A VoVNet stage of `modules` OSA modules (each `convs` 3x3 convs of width c_) with every OSA
    transition removed except the stage's last (Table 4, "Deep VoVNet + ELAN").

    With the inner transitions gone the stage is one chain of modules*convs 3x3 convs; as in ELAN,
    the single transition aggregates the stage input with the last module's conv outputs. csp=True splits the input channels
    50/50 (CSPNet): only one half enters the chain, the other goes straight to the transition.
    module_taps=True also aggregates every earlier module's last conv (shorter gradient paths for
    the early convs of long stages, at the cost of a wider transition).
    """

    def __init__(self, c1: int, c2: int, c_: int, modules: int = 1, convs: int = 5, csp: bool = False,
                 module_taps: bool = False, act: str = "silu"):
        super().__init__()
        if csp and c1 % 2:
            raise ValueError(f"a CSP split needs even input channels, got {c1}")
        self.csp = bool(csp)
        n = modules * convs
        c_in = c1 // 2 if csp else c1
        self.chain = nn.ModuleList(Conv(c_in if j == 0 else c_, c_, 3, act=act) for j in range(n))
        self.taps = {j for j in range(n) if j >= n - convs or (module_taps and (j + 1) % convs == 0)}
        self.transition = Conv(c1 + len(self.taps) * c_, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bypass, y = x.chunk(2, 1) if self.csp else (None, x)
        outs = [y]
        for j, conv in enumerate(self.chain):
            y = conv(y)
            if j in self.taps:
                outs.append(y)
        if bypass is not None:
            outs.append(bypass)
        return self.transition(torch.cat(outs, 1))


class SPP(nn.Module):
    """YOLOv3-SPP's spatial pyramid pooling: 1x1 to c1/2, max-pools 5/9/13 in parallel, 1x1 to c2."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13), act: str = "silu"):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(x, 1, x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPCSPC(nn.Module):
    """SPP inside a CSP split (YOLOR-CSP, YOLOv7): 3x3/1x1 convs, pools 5/9/13, 1x1+3x3, fused with
    a 1x1 bypass by a final 1x1 transition."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13), act: str = "silu"):
        super().__init__()
        c_ = c2
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, act=act)
        self.cv3 = Conv(c_, c_, 3, act=act)
        self.cv4 = Conv(c_, c_, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(x, 1, x // 2) for x in k)
        self.cv5 = Conv(c_ * (len(k) + 1), c_, 1, act=act)
        self.cv6 = Conv(c_, c_, 3, act=act)
        self.cv7 = Conv(2 * c_, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


class MPDown(nn.Module):
    """YOLOv7's stride-2 transition: a max-pool + 1x1 branch and a 1x1 + 3x3 stride-2 branch,
    c2/2 channels each, concatenated (conv branch first). `c_mid`: the conv branch's 1x1 width
    (default c2/2); `k`: the pool size and stride."""

    def __init__(self, c1: int, c2: int, act: str = "silu", c_mid: int | None = None, k: int = 2):
        super().__init__()
        c_ = c2 // 2
        self.pool = nn.MaxPool2d(k, k)
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c1, c_mid or c_, 1, act=act)
        self.cv3 = Conv(c_mid or c_, c_, 3, k, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.cv3(self.cv2(x)), self.cv1(self.pool(x))), 1)


class DownC(MPDown):
    """YOLOv7-E6/D6/E6E's stride-k transition: MPDown whose conv branch keeps the input width."""

    def __init__(self, c1: int, c2: int, k: int = 2, act: str = "silu"):
        super().__init__(c1, c2, act, c_mid=c1, k=k)
