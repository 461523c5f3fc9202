#!/usr/bin/env python
"""Every CUDA question in one run: correctness (the `cuda`-marked tests), speed and memory, and
the failure paths, as one markdown table (and, with --out, the same rows as JSON).

    python benchmarks/gpu_check.py --out runs/gpu_check       # on a GPU, within --budget (450 s)
    python benchmarks/gpu_check.py --device cpu --quick       # every code path on a CPU, ~1 minute

Needs only the repository: the bundled coco-mini and data generated from it. Rows the machine
cannot answer (no CUDA, the time budget spent) say so; no figure is ever filled in from elsewhere.
Speed rows: training img/s and peak memory with AMP per cfg and batch on real mosaic batches, the
loader's img/s per worker count beside them, inference ms/image in FP16, validation img/s,
channels_last, bf16 and torch.compile against the defaults.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.gpu_check import FULL, QUICK, SPEED_PARTS, Context, cuda_tests, environment, speed  # noqa: E402
from benchmarks.harness.gpu_report import Report  # noqa: E402
from utils.dist import select_device  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="0", help="a CUDA index (default 0), or cpu")
    p.add_argument("--quick", action="store_true", help="smallest settings: one cfg, tiny batches (the CPU check)")
    p.add_argument("--out", default=None, help="folder for gpu_check.json and the CUDA tests' log")
    p.add_argument("--work", default=None, help="folder for what the run writes (checkpoints, generated data; "
                   "default: OUT/work, else a temporary folder)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which the remaining measurements are skipped (default 450, quick 150)")
    p.add_argument("--only", nargs="+", choices=("tests", *SPEED_PARTS), default=None,
                   help="run only these parts (default: all), e.g. to fill rows a spent budget skipped")
    args = p.parse_args(argv)
    try:
        device = select_device(args.device)
    except ValueError as e:
        print(f"gpu_check.py: error: {e}", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else None
    work = Path(args.work) if args.work else out / "work" if out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    for folder in (work, out):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (150.0 if args.quick else 450.0)
    meta = {"command": " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "quick": args.quick, "budget_s": budget}
    report = Report(out, budget, meta)
    ctx = Context(device, settings, work, out or work)
    environment(report, ctx)
    parts = tuple(args.only or ("tests", *SPEED_PARTS))
    if "tests" in parts:
        cuda_tests(report, ctx)
    speed(report, ctx, parts)
    report.write()
    print(report.table())
    counts = report.as_dict()["meta"]["counts"]
    print(f"\n{len(report.rows)} rows in {report.elapsed():.0f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
