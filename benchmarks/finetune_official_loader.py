"""How much of a fine-tune's result is the training images' luck: the fine-tune of
benchmarks/finetune.py (yolov5n.pt, coco128, 3 epochs, 640, batch 16, the official scratch-low
recipe) for several seeds, each run twice with the same loop, loss and optimizer: once on our
loader's batches (train.py --seed N) and once on the batches the official YOLOv5 loader makes
with that seed (written by benchmarks/official_loader_dump.py under the official code's Python).
Box AP on coco_dev32 after each, side by side.

    python benchmarks/finetune_official_loader.py --official-python REF_VENV/bin/python \
        --official-repo YOLOV5_CHECKOUT --seeds 1 2 3

The official loader's albumentations ops draw from a generator its seed does not reach, so a seed
gives other official batches on every run: each is one more independent draw. The official code
is only run, in its own venv (see ../shared/bench/README.md); nothing of it is
imported here. Needs ../shared (the official files and the COCO samples). Writes
--out/finetune_official_loader.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import add_recipe_args, data_yamls, run, train_args, validate  # noqa: E402
from engine.eval.coco_eval import STAT_NAMES  # noqa: E402
from engine.train.build import build_trainer  # noqa: E402
from train import parse_args  # noqa: E402
from utils.structures import Batch  # noqa: E402


class ReplayLoader:
    """The batches of a dump folder, one epoch's per pass, as training batches."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.batches, self.epochs, self.images_per_epoch = meta["batches"], meta["epochs"], meta["images"]
        self.passes = 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        epoch = self.passes
        self.passes += 1
        if epoch >= self.epochs:
            raise RuntimeError(f"{self.folder} holds {self.epochs} epochs; epoch {epoch + 1} was asked for")
        for i in range(self.batches):
            with np.load(self.folder / f"e{epoch}_b{i}.npz") as z:
                yield replay_batch(torch.from_numpy(z["images"]), torch.from_numpy(z["targets"]).float())


def replay_batch(images: torch.Tensor, targets: torch.Tensor) -> Batch:
    """A Batch from the official layout: uint8 RGB NCHW images, targets [image, class, cx, cy, w, h]
    normalised. No masks (the fine-tuned model detects only)."""
    n, _, h, w = images.shape
    xywh = targets[:, 2:6] * torch.tensor([w, h, w, h], dtype=torch.float32)
    boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    masks = torch.zeros((len(targets), h // 4, w // 4), dtype=torch.uint8)
    return Batch(images, targets[:, 0].long(), targets[:, 1].long(), boxes, masks, list(range(n)), [""] * n,
                 [(h, w)] * n, [((1.0, 1.0), (0.0, 0.0))] * n)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-python", required=True, help="Python of a venv with the official code's requirements")
    p.add_argument("--official-repo", required=True, help="a checkout of the official YOLOv5 repository")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    add_recipe_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/finetune-official-loader"))
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    coco128 = Path(args.coco128).resolve()
    train_yaml, dev32_yaml = data_yamls(args.out, coco128, Path(args.dev32).resolve())
    rows = []
    for seed in args.seeds:
        run([sys.executable, "train.py", *train_args(args, train_yaml, f"ours-{seed}", seed), "--noval"],
            args.out / f"ours-{seed}.log")
        ours = validate(str(args.out / f"ours-{seed}/weights/last.pt"), dev32_yaml, args, f"val-ours-{seed}")
        dump = args.out / f"official-batches-{seed}"
        subprocess.run([args.official_python, str(ROOT / "benchmarks/official_loader_dump.py"),
                        "--repo", args.official_repo, "--images", str(coco128 / "images/train2017"),
                        "--hyp", args.hyp, "--epochs", str(args.epochs), "--img-size", str(args.img_size),
                        "--batch-size", str(args.batch_size), "--seed", str(seed), "--out", str(dump)],
                       check=True, stdout=subprocess.DEVNULL)
        # the same train.py arguments: only where the batches come from differs (a replay has no
        # dataset to plot the labels of)
        opt = parse_args([*train_args(args, train_yaml, f"official-loader-{seed}", seed), "--noval", "--noplots"])
        build_trainer(opt, train_loader=ReplayLoader(dump)).fit()
        theirs = validate(str(args.out / f"official-loader-{seed}/weights/last.pt"), dev32_yaml, args,
                          f"val-official-loader-{seed}")
        rows.append({"seed": seed, "ours": dict(zip(STAT_NAMES, ours)), "official_loader": dict(zip(STAT_NAMES, theirs))})
        (args.out / "finetune_official_loader.json").write_text(json.dumps(rows, indent=1))
    print(f"{'seed':<6}{'AP, our loader':>16}{'AP, official loader':>21}{'AP50 ours':>11}{'AP50 official':>15}")
    for r in rows:
        print(f"{r['seed']:<6}{r['ours']['AP']:>16.3f}{r['official_loader']['AP']:>21.3f}"
              f"{r['ours']['AP50']:>11.3f}{r['official_loader']['AP50']:>15.3f}")
    for key in ("ours", "official_loader"):
        aps = [r[key]["AP"] for r in rows]
        print(f"{key}: mean AP {np.mean(aps):.4f}, spread {min(aps):.3f}-{max(aps):.3f} over {len(aps)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
