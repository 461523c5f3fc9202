"""Check a dataset YAML the way training reads it, and report every split:

    python -m data.check DATA.yaml [--split val] [--verbose]

The report comes from the label index training builds (data/datasets.py load_index: the same
listing, parsing and validation, and the same cache), so what it counts is what training uses.
Exit status: 0, 1 when a split has no usable image, 2 when the YAML or a list file is wrong."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from data.config import DataConfig, SplitSpec, load_data_config
from data.datasets import load_index
from data.label_index import LabelIndex
from utils.errors import ConfigError, error_line

SHOWN = 5  # examples per kind of problem
PROBLEMS = [  # (kind in LabelIndex.counts, what it means)
    ("corrupt", "corrupt images (skipped)"),
    ("missing", "missing images (skipped)"),
    ("bad_labels", "bad label lines (skipped)"),
    ("duplicates", "duplicates (used once)"),
    ("fixed", "fixed (clipped boxes, polygons replaced by their box)"),
    ("crowd", "crowd regions (evaluation only)"),
]


def _where(spec: SplitSpec, root: Path) -> str:
    paths = spec.sources or tuple(p for p in (spec.images, spec.annotations, spec.labels, spec.list_file) if p)

    def short(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    return ", ".join(short(p) for p in paths)


def _examples(index: LabelIndex, kind: str, indent: str = "      ") -> list[str]:
    return [indent + e for e in index.examples.get(kind, [])[:SHOWN]]


def _class_table(index: LabelIndex, names: list[str]) -> list[str]:
    nc = len(names)
    per_class = np.bincount(index.classes, minlength=nc)
    image_of = np.repeat(np.arange(len(index)), np.diff(index.inst_offsets))
    images_with = np.zeros(nc, np.int64)
    for c in range(nc):
        images_with[c] = len(np.unique(image_of[index.classes == c]))
    width = max(5, *(len(n) for n in names))
    lines = [f"    {'':>3}  {'class':<{width}}  {'instances':>9}  {'images':>6}"]
    lines += [f"    {c:>3}  {names[c]:<{width}}  {per_class[c]:>9}  {images_with[c]:>6}"
              for c in range(nc) if per_class[c]]
    absent = [names[c] for c in range(nc) if not per_class[c]]
    if absent:
        lines.append(f"    {nc - len(absent)} of {nc} classes have instances; none of: {', '.join(absent)}")
    return lines


def split_report(index: LabelIndex, names: list[str]) -> list[str]:
    """The report lines of one split's index."""
    c = index.counts
    listed = c.get("images", 0) + c.get("corrupt", 0) + c.get("missing", 0)
    lines = [f"  images: {listed} listed, {len(index)} usable"]
    no_file = c.get("missing_labels", 0)
    lines.append(f"  images without labels: {c.get('empty', 0)} (no label file: {no_file}, "
                 f"label file with no usable instance: {c.get('empty', 0) - no_file})")
    lines += _examples(index, "missing_labels") if no_file else _examples(index, "empty")
    flags = index.polygon_flags()
    lines.append(f"  instances: {len(index.classes)} ({int(flags.sum())} polygon, {int((~flags).sum())} box only)")
    for kind, what in PROBLEMS:
        if c.get(kind, 0):
            lines.append(f"  {what}: {c[kind]}")
            lines += _examples(index, kind)
    clean = [what.split(" (")[0] for kind, what in PROBLEMS if not c.get(kind, 0)]
    if clean:
        lines.append(f"  none: {', '.join(clean)}")
    if len(index):
        h, w = index.shapes[:, 0], index.shapes[:, 1]
        lines.append(f"  image sizes: height {h.min()}-{h.max()}, width {w.min()}-{w.max()} pixels")
    if len(index.classes):
        lines += ["  instances per class:", *_class_table(index, names)]
    return lines


def check(cfg: DataConfig, splits: list[str]) -> tuple[list[str], bool]:
    """(report lines, whether every split has a usable image)."""
    lines = [f"{cfg.source}: {cfg.format} labels, {cfg.nc} classes, root {cfg.root}"]
    ok, done = True, {}
    for split in splits:
        spec = cfg.splits[split]
        lines.append(f"{split}: {_where(spec, cfg.root)}")
        key = repr(spec)
        if key in done:  # e.g. coco128: val is the train folder again
            lines.append(f"  the same images and labels as {done[key]}, see above")
            continue
        done[key] = split
        index = load_index(cfg, split)
        lines += split_report(index, cfg.names)
        if not len(index):
            lines.append(f"  error: '{split}' has no usable image")
            ok = False
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset YAML")
    p.add_argument("--split", action="append", choices=["train", "val", "test"], help="only this split (repeatable)")
    p.add_argument("--verbose", action="store_true", help="also log every problem as the index is built")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not args.verbose:  # the report shows the first few of each kind
        logging.getLogger("gradpath.data.labels").setLevel(logging.ERROR)
    try:
        cfg = load_data_config(args.data)
        splits = args.split or [s for s in ("train", "val", "test") if s in cfg.splits]
        missing = [s for s in splits if s not in cfg.splits]
        if missing:
            raise ConfigError(f"{args.data}: no '{missing[0]}' split")
        lines, ok = check(cfg, splits)
    except (ConfigError, OSError) as e:
        print(f"data.check: error: {error_line(e)}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
