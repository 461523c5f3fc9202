"""cfg YAML -> layers, through a registry of block names (no eval of strings).

A cfg has `nc`, `depth_multiple`, `width_multiple`, optional `act`, and `backbone` + `head` lists
of rows `[from, repeats, block, args]`; row i is layer i, so indices read against the paper's
figures. `from` is -1 (previous layer), an earlier index, or a list of them.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from models import blocks, heads, stages


class CfgError(ValueError):
    """A bad model cfg; the message names the file, the row and what is wrong."""


def scale_width(c: float, width: float, divisor: int = 8) -> int:
    return max(divisor, int(math.ceil(c * width / divisor) * divisor))


@dataclass(frozen=True)
class BlockSpec:
    """How the parser builds one block: which of its args are channel counts (scaled by width),
    how many args a row may give, its output channels from (input channels, built args), and
    whether the row's repeat count is passed to the block (CSP-style) instead of stacking copies."""

    cls: Callable[..., nn.Module]
    width_args: tuple[int, ...] = ()
    max_args: int = 0
    out: Callable[[list[int], list[Any]], int] = lambda ch, a: a[0]
    takes_channels: bool = True
    takes_repeats: bool = False


def _same(ch: list[int], a: list[Any]) -> int:
    return ch[0]


REGISTRY: dict[str, BlockSpec] = {
    # conv units: [c2, k, s, p, g] / [c2, k, s]
    "Conv": BlockSpec(blocks.Conv, (0,), 5),
    "RepConv": BlockSpec(blocks.RepConv, (0,), 3),
    # layer level: [c2, shortcut, e, partial, stop] / [c2, shortcut, e]
    "Bottleneck": BlockSpec(stages.Bottleneck, (0,), 5),
    "PRN": BlockSpec(stages.PartialResidual, (0,), 4),
    # stage level: [c2, shortcut, fusion, e, partial, stop] / [c2, shortcut] / [c2]
    "CSP": BlockSpec(stages.CSPStage, (0,), 6, takes_repeats=True),
    "C3": BlockSpec(stages.C3, (0,), 3, takes_repeats=True),
    "CSPNeck": BlockSpec(stages.CSPNeck, (0,), 1, takes_repeats=True),
    # network level: [c2, c_, n, tap, c_chain] / [c2, c_, modules, convs, csp, module_taps]
    "ELAN": BlockSpec(stages.ELAN, (0, 1, 4), 5),
    "VoVStage": BlockSpec(stages.VoVStage, (0, 1), 6),
    # pooling and resampling
    "SPP": BlockSpec(stages.SPP, (0,), 2),
    "SPPF": BlockSpec(blocks.SPPF, (0,), 2),
    "SPPCSPC": BlockSpec(stages.SPPCSPC, (0,), 2),
    "MPDown": BlockSpec(stages.MPDown, (0,), 1),
    "DownC": BlockSpec(stages.DownC, (0,), 2),
    "MP": BlockSpec(blocks.MaxPoolDown, (), 1, _same, takes_channels=False),
    "SP": BlockSpec(blocks.MaxPoolSame, (), 1, _same, takes_channels=False),
    "ReOrg": BlockSpec(blocks.SpaceToDepth, (), 0, lambda ch, a: 4 * ch[0], takes_channels=False),
    "Sum": BlockSpec(blocks.Sum, (), 0, _same, takes_channels=False),
    "Upsample": BlockSpec(blocks.Upsample, (), 1, _same, takes_channels=False),
    "Concat": BlockSpec(blocks.Concat, (), 1, lambda ch, a: sum(ch), takes_channels=False),
}
HEADS: dict[str, type[nn.Module]] = {"AnchorHead": heads.AnchorHead, "AnchorFreeHead": heads.AnchorFreeHead}


def parse_layers(cfg: dict[str, Any], source: str = "<cfg>") -> tuple[nn.ModuleList, list, list[int]]:
    """Build (layers, from-indices, output channels per layer) from a cfg dict."""
    for key in ("backbone", "head"):
        if not isinstance(cfg.get(key), list):
            raise CfgError(f"{source}: '{key}' must be a list of [from, repeats, block, args] rows")
    depth, width = float(cfg.get("depth_multiple", 1.0)), float(cfg.get("width_multiple", 1.0))
    act = cfg.get("act", "silu")
    layers, froms, channels = nn.ModuleList(), [], []
    rows = cfg["backbone"] + cfg["head"]
    for i, row in enumerate(rows):
        where = f"{source}: row {i} ({'backbone' if i < len(cfg['backbone']) else 'head'})"
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[3], list)):
            raise CfgError(f"{where}: expected [from, repeats, block, args], got {row!r}")
        f, n, name, args = row
        idx = [f] if isinstance(f, int) else f
        if not isinstance(idx, list) or not idx or not all(isinstance(j, int) for j in idx):
            raise CfgError(f"{where}: 'from' must be an int or a list of ints, got {f!r}")
        resolved = [j if j >= 0 else i + j for j in idx]
        if i == 0 and idx != [-1]:
            raise CfgError(f"{where}: the first layer must take the input (-1), got {f!r}")
        bad = [j for j, r in zip(idx, resolved) if i > 0 and not 0 <= r < i]
        if bad:
            raise CfgError(f"{where}: 'from' index {bad[0]} does not name an earlier layer (0..{i - 1})")
        ch_in = [3] if i == 0 else [channels[r] for r in resolved]
        module, c_out = _build(name, args, n, ch_in, depth, width, act, cfg, where)
        layers.append(module)
        froms.append(f if isinstance(f, int) else list(f))
        channels.append(c_out)
    return layers, froms, channels


def _build(name: str, args: list, n: int, ch_in: list[int], depth: float, width: float, act: str,
           cfg: dict, where: str) -> tuple[nn.Module, int]:
    if name in HEADS:
        return _build_head(name, args, ch_in, width, cfg, where), 0
    if name not in REGISTRY:
        known = ", ".join(sorted([*REGISTRY, *HEADS]))
        raise CfgError(f"{where}: unknown block '{name}' (known: {known})")
    spec = REGISTRY[name]
    if len(args) > spec.max_args:
        raise CfgError(f"{where}: {name} takes at most {spec.max_args} args, got {len(args)}: {args!r}")
    if not isinstance(n, int) or n < 1:
        raise CfgError(f"{where}: repeats must be a positive int, got {n!r}")
    if spec.takes_channels and len(ch_in) != 1:
        raise CfgError(f"{where}: {name} takes one input, got 'from' with {len(ch_in)}")
    built = [scale_width(a, width) if k in spec.width_args and isinstance(a, (int, float)) and a else a
             for k, a in enumerate(args)]
    repeats = max(round(n * depth), 1) if n > 1 else 1
    try:
        c_out = spec.out(ch_in, built)
        extra = {"act": act} if "act" in inspect.signature(spec.cls).parameters else {}
        if not spec.takes_channels:
            mods = [spec.cls(*built)]
        elif spec.takes_repeats:
            mods = [spec.cls(ch_in[0], built[0], repeats, *built[1:], **extra)]
        else:
            mods = [spec.cls(ch_in[0] if k == 0 else c_out, *built, **extra) for k in range(repeats)]
    except (TypeError, ValueError, IndexError) as e:
        raise CfgError(f"{where}: {name}{tuple(args)}: {e}") from None
    return (mods[0] if len(mods) == 1 else nn.Sequential(*mods)), c_out


def _build_head(name: str, args: list, ch_in: list[int], width: float, cfg: dict, where: str) -> nn.Module:
    nc = cfg.get("nc", 80)
    args = [nc if a == "nc" else a for a in args]
    try:
        if name == "AnchorHead":  # [nc, anchors, nm, npr, implicit, aux]
            if len(args) > 6:
                raise CfgError(f"{where}: AnchorHead takes at most 6 args [nc, anchors, nm, npr, implicit, aux]")
            nc_, anchors, nm, npr, implicit, aux = (args + [32, 256, True, False][len(args) - 2:])[:6]
            levels = len(ch_in) // 2 if aux else len(ch_in)
            if not (isinstance(anchors, list) and len(anchors) == levels):
                raise CfgError(f"{where}: AnchorHead needs one anchor list per input level ({levels})")
            return heads.AnchorHead(nc_, anchors, nm, scale_width(npr, width) if nm else 0, ch_in, implicit, bool(aux))
        nc_, nm, npr, reg_max = (args + [32, 256, 16])[:4]  # AnchorFreeHead: [nc, nm, npr, reg_max]
        return heads.AnchorFreeHead(nc_, nm, scale_width(npr, width) if nm else 0, reg_max, ch_in)
    except (TypeError, ValueError) as e:
        if isinstance(e, CfgError):
            raise
        raise CfgError(f"{where}: {name}{tuple(args)}: {e}") from None


def load_cfg(cfg: str | Path | dict) -> tuple[dict[str, Any], str]:
    """(cfg dict, a name for error messages) from a YAML path or an already-loaded dict."""
    if isinstance(cfg, dict):
        return dict(cfg), cfg.get("name", "<cfg dict>")
    import yaml

    from utils.paths import resolve_repo_path

    path = resolve_repo_path(cfg)
    if not path.is_file():  # a bare name: cfg/models/<name>.yaml
        path = resolve_repo_path(Path("cfg/models") / Path(str(cfg)).with_suffix(".yaml").name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in resolve_repo_path("cfg/models").glob("*.yaml")))
        raise CfgError(f"{cfg}: model cfg not found (a path, or one of: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CfgError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise CfgError(f"{path}: expected a mapping with backbone and head")
    data.setdefault("name", path.stem)
    return data, str(path)
