"""Model: the layers a cfg describes, run in order, with stride inference, fuse() and info()."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.blocks import Conv, RepConv
from models.heads import HeadBase
from models.parser import CfgError, load_cfg, parse_layers


class Model(nn.Module):
    def __init__(self, cfg: dict[str, Any], source: str = "<cfg>"):
        super().__init__()
        self.yaml = cfg
        self.layers, self.froms, self.channels = parse_layers(cfg, source)
        if not isinstance(self.layers[-1], HeadBase):
            raise CfgError(f"{source}: the last row must be a head (AnchorHead or AnchorFreeHead)")
        # outputs of these layers are kept during forward because a later row reads them
        self.keep = {j if j >= 0 else i + j for i, f in enumerate(self.froms)
                     for j in ([f] if isinstance(f, int) else f) if not (isinstance(f, int) and f == -1)}
        self.nc, self.nm = self.head.nc, self.head.nm
        self.aux_only = self._aux_only_layers()
        self._init_strides()

    def _resolved(self, i: int) -> list[int]:
        f = self.froms[i]
        return [j if j >= 0 else i + j for j in ([f] if isinstance(f, int) else f)]

    def _aux_only_layers(self) -> set[int]:
        """Layers that feed only auxiliary head inputs: skipped at inference (eval mode)."""
        last = len(self.layers) - 1
        if getattr(self.head, "aux", None) is None:
            return set()
        needed, todo = set(), self._resolved(last)[:self.head.nl]
        while todo:
            j = todo.pop()
            if j >= 0 and j not in needed:
                needed.add(j)
                todo += self._resolved(j)
        return set(range(last)) - needed

    def _init_strides(self) -> None:
        size = 128
        was_training = self.training
        self.train()
        with torch.no_grad():
            out = self.forward(torch.zeros(1, 3, size, size))
        self.head.strides.copy_(torch.tensor([size / p.shape[-2] if p.ndim == 4 else size / p.shape[2]
                                              for p in out.preds], dtype=torch.float32))
        self.head.init_biases()
        self.train(was_training)

    @property
    def head(self) -> HeadBase:
        """The last layer (a property, not a second registration, so the state_dict holds it once)."""
        return self.layers[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.head.strides

    def forward(self, x: torch.Tensor):
        """x: float (B,3,H,W) in 0..1. Train: HeadOutput. Eval: (pred (B,N,4+nc+nm), proto)."""
        outputs: list[torch.Tensor | None] = []
        for i, (layer, f) in enumerate(zip(self.layers, self.froms)):
            if not self.training and i in self.aux_only:
                outputs.append(None)
                continue
            if isinstance(f, list):
                inp = [x if j == -1 else outputs[j if j >= 0 else i + j] for j in f]
            elif f != -1:
                inp = outputs[f if f >= 0 else i + f]
            else:
                inp = x
            x = layer(inp)
            outputs.append(x if i in self.keep else None)
        return x

    def fuse(self) -> "Model":
        """Fold RepConv branches and every BatchNorm into single convs (inference only; outputs
        unchanged). RepConvs go first: they fold their own branches' BatchNorms."""
        for m in [m for m in self.modules() if isinstance(m, RepConv)]:
            m.fuse()
        for m in [m for m in self.modules() if isinstance(m, Conv)]:
            m.fuse()
        return self

    def profile(self, img_size: int = 640) -> list[tuple[float, tuple[int, ...]]]:
        """Per layer: GFLOPs (2 x conv multiply-accumulates) and output shape (no batch dim) at an
        img_size x img_size input, in eval mode (a head gives its predictions' shape).

        Every feature map's area is proportional to the input's when the input is a multiple of
        the largest stride, so the forward runs on a small probe and the figures are scaled exactly."""
        max_stride = int(max(self.stride))
        probe = 2 * max_stride if img_size % max_stride == 0 and img_size > 2 * max_stride else img_size
        side, area = img_size / probe, (img_size / probe) ** 2
        macs = [0] * len(self.layers)
        shapes: list[tuple[int, ...]] = [()] * len(self.layers)

        def conv_hook(i: int):
            def hook(m: nn.Conv2d, inp, out):
                macs[i] += out.numel() // out.shape[0] * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            return hook

        def shape_hook(i: int):
            def hook(m, inp, out):
                t = out[0] if isinstance(out, tuple) else out
                if isinstance(t, torch.Tensor) and t.ndim == 4:  # C x H x W
                    shapes[i] = (t.shape[1], round(t.shape[2] * side), round(t.shape[3] * side))
                elif isinstance(t, torch.Tensor) and t.ndim == 3:  # predictions x (4 + nc + nm)
                    shapes[i] = (round(t.shape[1] * area), t.shape[2])
            return hook

        handles = [layer.register_forward_hook(shape_hook(i)) for i, layer in enumerate(self.layers)]
        handles += [m.register_forward_hook(conv_hook(i)) for i, layer in enumerate(self.layers)
                    for m in layer.modules() if isinstance(m, nn.Conv2d)]
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                p = next(self.parameters())
                self.forward(torch.zeros(1, 3, probe, probe, device=p.device, dtype=p.dtype))
        finally:
            for h in handles:
                h.remove()
            self.train(was_training)
        return [(2 * m * area / 1e9, shape) for m, shape in zip(macs, shapes)]

    def info(self, img_size: int = 640) -> dict[str, float]:
        """layers, params, and GFLOPs (2 x conv multiply-accumulates) at img_size x img_size."""
        return {"layers": len(self.layers), "params": sum(p.numel() for p in self.parameters()),
                "gflops": sum(g for g, _ in self.profile(img_size))}


def build_model(cfg: str | Path | dict, num_classes: int | None = None) -> Model:
    """Build the network a cfg (YAML path or dict) describes; num_classes overrides its nc."""
    data, source = load_cfg(cfg)
    if num_classes is not None:
        data["nc"] = int(num_classes)
    return Model(data, source)
