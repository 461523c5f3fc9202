"""Tables, plots and the CLI of the gradient path analysis (models/gradpath/analysis.py).

python -m models.gradpath cfg/models/X.yaml [--img-size 64] [--plot out.png] [--compare Y.yaml ...]
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

from models.gradpath.analysis import GradPathReport, LayerPaths, analyze
from utils.plots import pyplot, save_figure


def fmt_count(n: int) -> str:
    """Path counts can be huge Python ints: '123', '4.6e21'."""
    if n < 10 ** 6:
        return str(n)
    digits = str(n)
    return f"{digits[0]}.{digits[1]}e{len(digits) - 1}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """GitHub-flavoured markdown table (pastes into the README as is)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _stages(report: GradPathReport) -> dict[str, list[LayerPaths]]:
    by_stage: dict[str, list[LayerPaths]] = defaultdict(list)
    for lp in report.layers:
        by_stage[lp.stage].append(lp)
    return by_stage


def stage_table(report: GradPathReport) -> str:
    """Per stage: weighted layers, range of their shortest paths, longest path, distinct
    timestamps, most paths to one layer, and channel-group timestamp sets."""
    rows = []
    for stage, lps in _stages(report).items():
        lo, hi = min(lp.shortest for lp in lps), max(lp.shortest for lp in lps)
        rows.append([stage, str(len(lps)), f"{lo}" if lo == hi else f"{lo}-{hi}",
                     str(max(lp.longest for lp in lps)),
                     str(len({t for lp in lps for t in lp.timestamps})),
                     fmt_count(max(lp.sources for lp in lps)), str(sum(lp.timestamp_sets for lp in lps))])
    return _table(["stage", "convs", "shortest", "longest", "timestamps", "max sources", "ts sets"], rows)


def summary(report: GradPathReport) -> dict[str, float]:
    """Network figures: the longest of the layers' shortest paths and the longest path, plus means."""
    n = len(report.layers)
    return {"convs": n, "params_M": report.params / 1e6, "max_shortest": report.max_shortest,
            "longest": report.longest, "mean_shortest": sum(lp.shortest for lp in report.layers) / n,
            "mean_timestamps": sum(len(lp.timestamps) for lp in report.layers) / n,
            "ts_sets": report.timestamp_sets,
            "log10_sources": math.log10(max(lp.sources for lp in report.layers))}


def compare_table(reports: dict[str, GradPathReport]) -> str:
    rows = []
    for name, rep in reports.items():
        s = summary(rep)
        rows.append([name, str(s["convs"]), f"{s['params_M']:.1f}", str(s["max_shortest"]), str(s["longest"]),
                     f"{s['mean_shortest']:.2f}", f"{s['mean_timestamps']:.1f}", str(s["ts_sets"]),
                     f"{s['log10_sources']:.1f}"])
    header = ["model", "convs", "params M", "max shortest", "longest", "mean shortest", "timestamps/layer",
              "ts sets", "log10 max sources"]
    return _table(header, rows)


def plot_reports(reports: dict[str, GradPathReport], path: str | Path) -> Path:
    """Shortest and longest gradient path of every weighted layer (forward order), one panel per model."""
    plt = pyplot()
    n = len(reports)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    ymax = max(rep.longest for rep in reports.values())
    for ax, (name, rep) in zip(axes.flat, reports.items()):
        x = range(len(rep.layers))
        ax.fill_between(x, [lp.shortest for lp in rep.layers], [lp.longest for lp in rep.layers], alpha=0.15)
        ax.plot(x, [lp.shortest for lp in rep.layers], label="shortest", lw=1)
        ax.plot(x, [lp.longest for lp in rep.layers], label="longest", lw=1)
        ax.set_title(f"{name}: max shortest {rep.max_shortest}, longest {rep.longest}", fontsize=9)
        ax.set_xlabel("weighted layer (forward order)", fontsize=8)
        ax.set_ylabel("gradient path length", fontsize=8)
        ax.set_ylim(0, ymax * 1.05 + 1)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return save_figure(fig, path, dpi=110)


def analyze_cfg(cfg: str | Path, img_size: int = 64) -> GradPathReport:
    from models.model import build_model

    return analyze(build_model(cfg), img_size=img_size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.gradpath", description=__doc__.splitlines()[0])
    ap.add_argument("cfg", help="model cfg YAML")
    ap.add_argument("--img-size", type=int, default=64, help="input size of the one forward pass")
    ap.add_argument("--plot", default="", help="write shortest/longest path per layer to this PNG")
    ap.add_argument("--compare", nargs="*", default=[], help="more cfgs to put side by side")
    args = ap.parse_args(argv)
    if args.img_size < 32 or args.img_size % 32:
        ap.error(f"--img-size {args.img_size}: must be a multiple of 32 (at least 32)")
    import torch

    torch.set_num_threads(1)  # a 64 px pass is tiny; extra threads only spin on a busy CPU
    reports, failed = {}, 0
    for cfg in [args.cfg, *args.compare]:
        try:
            name = Path(cfg).stem
            name = name if name not in reports else f"{name}#{len(reports)}"
            reports[name] = analyze_cfg(cfg, args.img_size)
        except Exception as e:  # one broken cfg should not hide the others' table
            print(f"{cfg}: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
    if not reports:
        return 1
    first = next(iter(reports.values()))
    print(f"## {next(iter(reports))}: gradient paths per stage ({args.img_size}px)\n")
    print(stage_table(first))
    s = summary(first)
    print(f"\nweighted layers {s['convs']}, longest shortest gradient path {s['max_shortest']}, "
          f"longest gradient path {s['longest']}")
    if first.unreached:
        print(f"no gradient reaches: {', '.join(first.unreached)}")
    if len(reports) > 1:
        print("\n" + compare_table(reports))
    if args.plot:
        print(f"\nplot: {plot_reports(reports, args.plot)}")
    return 1 if failed else 0
