"""Detection heads with an optional prototype mask branch.

Both heads share `HeadBase`: the proto branch and the eval output contract
(B, N, 4 + nc + nm) = xyxy input pixels, per-class probabilities, raw mask coefficients.
"""
from __future__ import annotations

import abc
import math

import torch
from torch import nn

from models.blocks import Conv, ImplicitA, ImplicitM, Proto
from utils.geometry import cell_grid, dist_to_bbox
from utils.structures import HeadOutput


class HeadBase(nn.Module, abc.ABC):
    kind = ""

    def __init__(self, nc: int, nm: int, npr: int, ch: list[int]):
        super().__init__()
        self.nc, self.nm, self.nl = nc, nm, len(ch)
        self.proto = Proto(ch[0], npr, nm) if nm > 0 else None
        self.register_buffer("strides", torch.zeros(self.nl), persistent=True)

    def forward(self, xs: list[torch.Tensor]):
        proto = self.proto(xs[0]) if self.proto is not None else None
        preds = self.level_outputs(xs)
        if self.training:
            return self.head_output(preds, proto)
        return self.decode(preds), proto

    @abc.abstractmethod
    def head_output(self, preds: list[torch.Tensor], proto: torch.Tensor | None) -> HeadOutput:
        """The training-mode contract (utils.structures.HeadOutput)."""

    @abc.abstractmethod
    def level_outputs(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw per-level prediction tensors."""

    @abc.abstractmethod
    def decode(self, preds: list[torch.Tensor]) -> torch.Tensor:
        """(B, N, 4 + nc + nm): xyxy input pixels, class probabilities, mask coefficients."""


class AnchorHead(HeadBase):
    """YOLOR/YOLOv5 r6.2 anchor-based head. `implicit`: True (YOLOR/YOLOv7 IDetect) wraps each level's
    1x1 prediction conv in implicit knowledge, ImplicitA added before and ImplicitM multiplied after;
    "a" adds ImplicitA only (YOLOv7-seg's ISegment, whose forward never applies its ImplicitM);
    False (YOLOv5) uses the conv alone. `aux` (YOLOv7-W6 and larger): the inputs after the first
    len(anchors) feed auxiliary 1x1 prediction convs, trained as extra heads and unused at inference."""

    kind = "anchor"
    IMPLICIT = (True, False, "a")

    def __init__(self, nc: int, anchors: list[list[float]], nm: int = 32, npr: int = 256, ch: list[int] = (),
                 implicit: bool | str = True, aux: bool = False):
        if implicit not in self.IMPLICIT:
            raise ValueError(f"implicit must be one of {self.IMPLICIT}, got {implicit!r}")
        nl = len(anchors)
        if len(ch) != nl * (2 if aux else 1):
            raise ValueError(f"{len(ch)} inputs for {nl} anchor levels{' and as many auxiliary ones' if aux else ''}")
        main, extra = list(ch[:nl]), list(ch[nl:])
        super().__init__(nc, nm, npr, main)
        self.na = len(anchors[0]) // 2
        self.no = 5 + nc + nm
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2))
        self.ia = nn.ModuleList((ImplicitA(c) if implicit else nn.Identity()) for c in main)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in main)
        self.im = nn.ModuleList((ImplicitM(self.no * self.na) if implicit is True else nn.Identity()) for _ in main)
        self.aux = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in extra) if aux else None

    def _shape(self, y: torch.Tensor) -> torch.Tensor:
        """(B, na*no, h, w) -> (B, na, h, w, no); in eval a view, which the decoding reads back
        channel-major without a copy (no transpose of the raw maps in an exported graph)"""
        b, _, h, w = y.shape
        p = y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2)
        return p.contiguous() if self.training else p

    def level_outputs(self, xs):
        return [self._shape(self.im[i](self.m[i](self.ia[i](xs[i])))) for i in range(self.nl)]

    def forward(self, xs: list[torch.Tensor]):
        out = super().forward(xs)
        if self.training and self.aux is not None:
            out.aux = [self._shape(conv(x)) for conv, x in zip(self.aux, xs[self.nl:])]
        return out

    def head_output(self, preds, proto):
        return HeadOutput("anchor", preds, proto, self.strides, self.anchors, 0, self.nc, self.nm)

    def _level_terms(self, p: torch.Tensor, i: int) -> tuple[torch.Tensor, ...]:
        """Level i's decoded terms, channel-major, each (B, na, k, h*w): box centres and sizes in
        input pixels, objectness, class probabilities, raw mask coefficients. Channel-major, every
        term is a run of whole maps: no split along the innermost axis, which costs the OpenVINO
        CPU plugin a reference kernel per level (a quarter of an INT8 gp-n-seg's time)."""
        b, na, h, w, no = p.shape
        q = p.float().permute(0, 1, 4, 2, 3).reshape(b, na, no, h * w)
        g = cell_grid(h, w, q.device, q.dtype).T.reshape(1, 1, 2, h * w)
        xy = (q[:, :, :2].sigmoid() * 2 - 0.5 + g) * self.strides[i]
        wh = (q[:, :, 2:4].sigmoid() * 2) ** 2 * self.anchors[i].view(1, na, 2, 1)
        return xy, wh, q[:, :, 4:5].sigmoid(), q[:, :, 5:5 + self.nc].sigmoid(), q[:, :, 5 + self.nc:]

    @staticmethod
    def _rows(levels: list[torch.Tensor]) -> torch.Tensor:
        """Channel-major levels (B, na, C, h*w) -> (B, N, C), rows level by level, then anchor,
        grid row, grid column."""
        return torch.cat([t.transpose(2, 3).reshape(t.shape[0], -1, t.shape[2]) for t in levels], 1)

    def decode_raw(self, preds: list[torch.Tensor]) -> torch.Tensor:
        """(B, N, 5 + nc + nm): cx, cy, w, h in input pixels, objectness, class probabilities (not
        multiplied by objectness), raw mask coefficients; rows level by level, then anchor, grid row,
        grid column. This is the official YOLOv5/YOLOv7 inference layout."""
        return self._rows([torch.cat(self._level_terms(p, i), 2) for i, p in enumerate(preds)])

    def decode(self, preds):
        levels = []
        for i, p in enumerate(preds):
            xy, wh, obj, cls, coef = self._level_terms(p, i)
            levels.append(torch.cat((xy - wh / 2, xy + wh / 2, obj * cls, coef), 2))
        return self._rows(levels)

    @torch.no_grad()
    def init_biases(self, class_prior: float | None = None) -> None:
        """Objectness for ~8 objects per 640 image, classes at a 0.6/nc prior."""
        for conv, s in zip([*self.m, *(self.aux or [])], [*self.strides, *(self.strides if self.aux else [])]):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
            b[:, 5:5 + self.nc] += math.log(class_prior or 0.6 / (self.nc - 0.99))


class AnchorFreeHead(HeadBase):
    """Decoupled anchor-free head: per level a box branch (4 x reg_max distribution bins), a class
    branch and, with masks, a coefficient branch; each two 3x3 convs then a 1x1 prediction."""

    kind = "anchor_free"

    def __init__(self, nc: int, nm: int = 32, npr: int = 256, reg_max: int = 16, ch: list[int] = ()):
        super().__init__(nc, nm, npr, ch)
        self.reg_max = reg_max
        c2 = max(16, ch[0] // 4, 4 * reg_max)
        c3 = max(ch[0], min(nc, 100))
        c4 = max(ch[0] // 4, nm)

        def branch(c_in, c_mid, c_out):
            return nn.Sequential(Conv(c_in, c_mid, 3), Conv(c_mid, c_mid, 3), nn.Conv2d(c_mid, c_out, 1))

        self.box = nn.ModuleList(branch(c, c2, 4 * reg_max) for c in ch)
        self.cls = nn.ModuleList(branch(c, c3, nc) for c in ch)
        self.coef = nn.ModuleList(branch(c, c4, nm) for c in ch) if nm > 0 else None
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32))

    def level_outputs(self, xs):
        out = []
        for i, x in enumerate(xs):
            parts = [self.box[i](x), self.cls[i](x)] + ([self.coef[i](x)] if self.coef is not None else [])
            out.append(torch.cat(parts, 1))
        return out

    def head_output(self, preds, proto):
        return HeadOutput("anchor_free", preds, proto, self.strides, None, self.reg_max, self.nc, self.nm)

    def decode(self, preds):
        outs = []
        for i, p in enumerate(preds):
            b, _, h, w = p.shape
            p = p.float().flatten(2).transpose(1, 2)  # (B, h*w, C)
            # bins is float16 after model.half() (--half); the decode runs in float32. A (reg_max, 1)
            # matrix, not a vector: OpenVINO's CPU plugin fails to fuse a vector MatMul followed by a Multiply
            bins = self.bins.float()[:, None]
            dist = (p[..., :4 * self.reg_max].view(b, -1, 4, self.reg_max).softmax(-1) @ bins).squeeze(-1)
            # the strides stay tensors here (not anchor_points' Python floats): no graph break under --compile
            centres = (cell_grid(h, w, p.device, p.dtype) + 0.5) * self.strides[i]
            box = dist_to_bbox(centres, dist * self.strides[i])
            scores = p[..., 4 * self.reg_max:4 * self.reg_max + self.nc].sigmoid()
            outs.append(torch.cat((box, scores, p[..., 4 * self.reg_max + self.nc:]), -1))
        return torch.cat(outs, 1)

    @torch.no_grad()
    def init_biases(self, class_prior: float | None = None) -> None:
        for box, cls, s in zip(self.box, self.cls, self.strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.nc / (640 / float(s)) ** 2))
