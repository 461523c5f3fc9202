"""Per-layer table of a model cfg: `python -m models.summary cfg/models/X.yaml [--img-size 640]`.

One row per cfg row (the indices the cfg's comments use): where it reads from, the block and its
args, output shape, parameters and GFLOPs (2 x conv multiply-accumulates), then the totals.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from torch import nn

from models.model import Model, build_model
from models.parser import CfgError


@dataclass
class LayerRow:
    index: int
    source: str
    block: str
    args: str
    shape: str
    params: int
    gflops: float


def layer_rows(model: Model, img_size: int = 640) -> list[LayerRow]:
    """Rows for every layer, FLOPs and output shapes at img_size x img_size (Model.profile)."""
    rows = model.yaml["backbone"] + model.yaml["head"]
    return [LayerRow(i, str(r[0]), r[2] + (f" x{r[1]}" if r[1] != 1 else ""), _args_text(r[3]),
                     "x".join(map(str, shape)), sum(p.numel() for p in layer.parameters()), gflops)
            for i, (r, layer, (gflops, shape)) in enumerate(zip(rows, model.layers, model.profile(img_size)))]


def stage_label(model: nn.Module, name: str) -> str:
    """Top-level stage of a module/parameter name: '06_ELAN' for row 6 of a layer list
    (nn.ModuleList/nn.Sequential child), else the top-level child's name."""
    parts = name.split(".")
    top = getattr(model, parts[0], None) if parts[0] else None
    if isinstance(model, (nn.Sequential, nn.ModuleList)) and parts[0].isdigit():
        top, parts, container = model[int(parts[0])], ["", parts[0]], model
    elif isinstance(top, (nn.Sequential, nn.ModuleList)) and len(parts) > 1 and parts[1].isdigit():
        container, top = top, top[int(parts[1])]
    else:
        return parts[0] or "root"
    width = len(str(len(container) - 1))
    return f"{int(parts[1]):0{width}d}_{type(top).__name__}"


def _args_text(args: list) -> str:
    """Args as written, with anchor lists abbreviated so head rows stay one line."""
    return "[" + ", ".join("anchors" if isinstance(a, list) and a and isinstance(a[0], list) else str(a)
                           for a in args) + "]"


def format_table(name: str, rows: list[LayerRow], img_size: int) -> str:
    head = f"{'#':>3}  {'from':<14} {'block':<16} {'args':<48} {'out (CxHxW)':<16} {'params':>11} {'GFLOPs':>8}"
    lines = [f"{name} at {img_size}x{img_size}", head, "-" * len(head)]
    lines += [f"{r.index:>3}  {r.source:<14} {r.block:<16} {r.args:<48} {r.shape:<16} {r.params:>11,} {r.gflops:>8.2f}"
              for r in rows]
    total_p, total_g = sum(r.params for r in rows), sum(r.gflops for r in rows)
    lines += ["-" * len(head), f"{len(rows)} layers, {total_p:,} parameters ({total_p / 1e6:.2f}M), "
                               f"{total_g:.2f} GFLOPs at {img_size}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.summary", description=__doc__.splitlines()[0])
    parser.add_argument("cfg", nargs="+", help="model cfg YAML(s)")
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--nc", type=int, default=None, help="override the cfg's number of classes")
    args = parser.parse_args(argv)
    for cfg in args.cfg:
        try:
            model = build_model(cfg, num_classes=args.nc)
        except CfgError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_table(cfg, layer_rows(model, args.img_size), args.img_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
