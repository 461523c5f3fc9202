#!/usr/bin/env python
"""Fine-tuning an official checkpoint: box AP on coco_dev32 before and after a short fine-tune on
coco128, beside the official code's figures; training images/s and the peak memory of the
training process tree (RSS summed over train.py and its dataloader workers, and PSS).

    python benchmarks/finetune.py                  # yolov5n.pt, 3 epochs, 640, batch 16 (2-core CPU: ~15-25 min)
    python benchmarks/finetune.py --epochs 1 --out /tmp/ft1

It runs the user's commands, as a user would:
    python val.py   --weights W --data DEV32 --img-size 640 --conf-thres 0.001 --iou-thres 0.65
    python train.py --weights W --data COCO128 --hyp HYP --epochs 3 --img-size 640 --batch-size 16
    python val.py   --weights RUN/weights/last.pt ... (as above)
where DEV32 scores coco_dev32's 32 images against both of its JSONs (merged into one file in --out)
and COCO128 trains on coco128_instances and validates on the same DEV32 each epoch. The figures
are written to --out/finetune.json. Needs ../shared (the official files and the COCO samples).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.eval.coco_eval import STAT_NAMES  # noqa: E402
from utils.memory import process_tree_rss  # noqa: E402

SHARED = ROOT.parent / "shared"
OFFICIAL_AP = SHARED / "official/yolov5n-dev32-ap.json"


def data_yamls(out: Path, coco128: Path, dev32: Path) -> tuple[Path, Path]:
    """(training YAML: coco128 train, dev32 val; validation YAML: dev32) with dev32's train and val
    JSONs merged into one ground truth."""
    parts = [json.loads((dev32 / f"annotations/instances_{s}.json").read_text()) for s in ("train", "val")]
    merged = {**parts[0], "images": parts[0]["images"] + parts[1]["images"],
              "annotations": parts[0]["annotations"] + parts[1]["annotations"]}
    (out / "dev32_all.json").write_text(json.dumps(merged))
    val = {"images": str(dev32 / "images"), "annotations": str(out / "dev32_all.json")}
    train = {"format": "coco", "path": str(coco128), "val": val,
             "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"}}
    (out / "coco128.yaml").write_text(yaml.safe_dump(train))
    (out / "dev32.yaml").write_text(yaml.safe_dump({"format": "coco", "path": str(dev32), "val": val}))
    return out / "coco128.yaml", out / "dev32.yaml"


def box_stats(printed: str) -> list[float]:
    """The 12 COCO box stats of val.py's printed box table."""
    table = printed.split("--- box", 1)[-1]
    values = [float(v) for v in re.findall(r"\] = (-?[0-9.]+)", table)[:12]]
    if len(values) != 12:
        raise RuntimeError(f"val.py printed no box table:\n{printed[-2000:]}")
    return values


def run(cmd: list[str], log: Path) -> tuple[str, int, int, float]:
    """Run cmd with its output to log; (output, peak RSS and PSS of its process tree, seconds)."""
    peak, pss = [0], [0]
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)

        def watch() -> None:
            while proc.poll() is None:
                try:
                    peak[0] = max(peak[0], process_tree_rss(pid=proc.pid))
                    pss[0] = max(pss[0], process_tree_rss(proportional=True, pid=proc.pid))
                except Exception:  # the process ended between poll() and the reading
                    pass
                time.sleep(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        rc = proc.wait()
        watcher.join()
    text = log.read_text()
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {log}:\n{text[-3000:]}")
    return text, peak[0], pss[0], time.time() - t0


def validate(weights: str, data: Path, args: argparse.Namespace, name: str) -> list[float]:
    cmd = [sys.executable, "val.py", "--weights", weights, "--data", str(data), "--img-size", str(args.img_size),
           "--conf-thres", "0.001", "--iou-thres", "0.65", "--batch-size", "32", "--workers", str(args.workers),
           "--project", str(args.out), "--name", name, "--exist-ok"]
    return box_stats(run(cmd, args.out / f"{name}.log")[0])


def train_args(args: argparse.Namespace, train_yaml: Path, name: str, seed: int) -> list[str]:
    """train.py's arguments for the fine-tune of `args` (add_recipe_args), run `name` under --out."""
    return ["--weights", args.weights, "--data", str(train_yaml), "--hyp", args.hyp, "--epochs", str(args.epochs),
            "--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--seed", str(seed), "--lr-schedule", args.lr_schedule, "--project", str(args.out), "--name", name,
            "--exist-ok"]


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The fine-tune's weights, recipe and data (shared with finetune_official_loader.py)."""
    p.add_argument("--weights", default=str(SHARED / "official/yolov5n.pt"))
    p.add_argument("--hyp", default=str(SHARED / "official/hyp/yolov5-hyp.scratch-low.yaml"))
    p.add_argument("--coco128", default=str(SHARED / "data/dev/coco128_instances"))
    p.add_argument("--dev32", default=str(SHARED / "data/dev/coco_dev32"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lr-schedule", default="linear-yolov5", help="train.py --lr-schedule (default: the official "
                   "YOLOv5 train.py's, which made the official figures)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_args(p)
    p.add_argument("--cfg", default=None, help="train.py --cfg (default: the architecture of --weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="")
    p.add_argument("--out", type=Path, default=Path("runs/finetune"))
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    train_yaml, dev32_yaml = data_yamls(args.out, Path(args.coco128).resolve(), Path(args.dev32).resolve())

    before = validate(args.weights, dev32_yaml, args, "val-before")
    cmd = [sys.executable, "train.py", *train_args(args, train_yaml, "train", args.seed)]
    cmd += (["--cfg", args.cfg] if args.cfg else []) + (["--device", args.device] if args.device else [])
    _, peak, pss, seconds = run(cmd, args.out / "train.log")
    with (args.out / "train/results.csv").open() as f:
        rows = list(csv.DictReader(f))
    img_s = [float(r["sys/train_img_s"]) for r in rows]
    after = validate(str(args.out / "train/weights/last.pt"), dev32_yaml, args, "val-after")

    official = json.loads(OFFICIAL_AP.read_text()) if OFFICIAL_AP.is_file() else {}
    result = {"command": " ".join(cmd[1:]), "before": dict(zip(STAT_NAMES, before)), "after": dict(zip(STAT_NAMES, after)),
              "official_before": dict(zip(STAT_NAMES, official.get("official yolov5n.pt", []))),
              "official_after": dict(zip(STAT_NAMES, official.get("after the official 3-epoch fine-tune on coco128", []))),
              "train_img_s_per_epoch": img_s, "train_img_s": len(img_s) / sum(1 / v for v in img_s),
              "peak_rss_gib": peak / 2**30, "peak_pss_gib": pss / 2**30, "train_wall_s": seconds}
    (args.out / "finetune.json").write_text(json.dumps(result, indent=1))
    print(f"train: {result['command']}")
    print(f"{'coco_dev32 box':<22}{'AP before':>10}{'AP after':>10}{'change':>8}{'AP50 before':>12}{'AP50 after':>11}")
    for who, b, a in (("gradpath", before, after),
                      ("official code (3 ep)", official.get("official yolov5n.pt"),
                       official.get("after the official 3-epoch fine-tune on coco128"))):
        if b and a:
            print(f"{who:<22}{b[0]:>10.3f}{a[0]:>10.3f}{a[0] - b[0]:>+8.3f}{b[1]:>12.3f}{a[1]:>11.3f}")
    print(f"training {result['train_img_s']:.2f} img/s (epochs: {', '.join(f'{v:.2f}' for v in img_s)}); peak memory "
          f"{result['peak_rss_gib']:.2f} GiB RSS summed over the process tree, {result['peak_pss_gib']:.2f} GiB PSS; "
          f"train.py {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
