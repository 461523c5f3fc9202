#!/usr/bin/env python
"""Training speed against the official YOLOv5 train.py: the same graph (yolov5n.pt), the same data
(a copy of coco128 in the YOLO-seg form both codes read), the same recipe (640, batch 16, 2
workers, 3 epochs, the official scratch-low hyp and LR schedule, no validation, no plots, fixed
anchors), run one after the other, each as its user would run it:

    python benchmarks/train_speed.py --official-python REF_VENV/bin/python --official-repo YOLOV5_CHECKOUT
    python benchmarks/train_speed.py ... --epochs 2 --img-size 320 --repeats 2   # quicker, alternating

Per side and epoch: wall seconds from the epoch's progress bar appearing to its last batch, and
the CPU seconds (user + sys) the process tree spent in that time, split into the main process and
its data-loader workers (CPU time is what to compare on a shared, loaded machine; wall time on a
quiet one). The steady state is the mean over the epochs after the first (which starts the
workers). Memory: the peak of the tree's RSS summed over its processes (sampled every 0.5 s) and
the main process's exact peak (VmHWM). Each run is stopped once its last epoch ends (the official
code validates after it even with --noval). Figures go to --out/train_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data")).parent
COCO128 = SHARED / "data/dev/coco128_instances"
# an epoch's progress bar, "E/N ...: 42%|####   | 3/8 [" (ours, tqdm) or "E/N  0G ...: 42% ━━── 3/8 " (the
# official code's bar): the epoch's label, the batches done, the batches in all
EPOCH_BAR = re.compile(r"^\s*(\d+/\d+)\b.*?\d+%.*?\s(\d+)/(\d+)[\s\[]")
# the official code prints this header before each epoch's bar and draws the bar after the first batch
EPOCH_HEADER = re.compile(r"^\s*Epoch\s+GPU_mem\b")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Epoch:
    wall_s: float
    main_cpu_s: float
    worker_cpu_s: float


@dataclass
class SideRun:
    side: str
    command: str
    epochs: list[Epoch] = field(default_factory=list)
    launch_to_end_s: float = 0.0  # launch to the last epoch's end (start-up and between-epoch saves included)
    peak_tree_rss_mib: float = 0.0
    peak_main_rss_mib: float = 0.0
    load_avg: float = 0.0  # the 1-minute load average, mean over the run

    def steady(self) -> Epoch:
        rest = self.epochs[1:] or self.epochs
        return Epoch(*(statistics.mean(getattr(e, k) for e in rest) for k in ("wall_s", "main_cpu_s", "worker_cpu_s")))


def prepare_data(out: Path) -> Path:
    """A copy of coco128 (images, YOLO-seg labels) under out with a YAML naming it by absolute
    path: both codes write their label caches beside the copy, never into the shared data."""
    dst = out / "coco128"
    if not (dst / "images/train2017").is_dir():
        for sub in ("images", "labels"):
            shutil.copytree(COCO128 / sub, dst / sub, dirs_exist_ok=True)
    text = (COCO128 / "coco128-seg.yaml").read_text()
    yaml_path = out / "coco128.yaml"
    yaml_path.write_text(re.sub(r"(?m)^path: .*$", f"path: {dst}", text))
    return yaml_path


def count_images(data: Path) -> int:
    """Images in the YAML's train split (a folder)."""
    cfg = yaml.safe_load(data.read_text())
    folder = Path(cfg.get("path", data.parent)) / cfg["train"]
    return sum(1 for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))


def tree_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of process pid, CPU seconds of its live descendants), user + sys."""
    me = psutil.Process(pid)
    t = me.cpu_times()
    kids = 0.0
    for c in me.children(recursive=True):
        try:
            ct = c.cpu_times()
            kids += ct.user + ct.system
        except psutil.Error:
            pass
    return t.user + t.system, kids


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Watch:
    """Samples a running process tree: summed RSS, the main process's VmHWM, the load average."""

    def __init__(self, pid: int):
        self.pid, self.tree_rss, self.main_hwm, self.loads = pid, 0, 0, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.5):
            try:
                me = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
            except psutil.Error:
                continue
            self.tree_rss = max(self.tree_rss, rss)
            self.main_hwm = max(self.main_hwm, peak_rss_kib(self.pid))
            self.loads.append(os.getloadavg()[0])

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_side(side: str, cmd: list[str], cwd: Path, epochs: int, log: Path) -> SideRun:
    """Run one training command; the epochs from its progress bars (see EPOCH_BAR)."""
    result = SideRun(side, " ".join(cmd))
    t_launch = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    watch = Watch(proc.pid)
    seen: list[str] = []  # epoch bar labels in order of appearance
    start: dict[str, tuple[float, float, float]] = {}
    header = None  # (time, CPU) at the last epoch header not yet followed by its bar
    buf = b""
    with log.open("wb") as f:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            f.write(chunk)
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in lines:
                text = ANSI.sub("", line.decode("utf-8", "replace"))
                if EPOCH_HEADER.match(text):
                    header = (time.perf_counter(), *tree_cpu(proc.pid))
                m = EPOCH_BAR.match(text)
                if not m:
                    continue
                label, n, total = m.group(1), int(m.group(2)), int(m.group(3))
                if label not in seen:
                    seen.append(label)
                    start[label], header = header or (time.perf_counter(), *tree_cpu(proc.pid)), None
                elif label in start and n == total and len(result.epochs) < seen.index(label) + 1:
                    t, main, kids = time.perf_counter(), *tree_cpu(proc.pid)
                    t0, main0, kids0 = start[label]
                    result.epochs.append(Epoch(t - t0, main - main0, kids - kids0))
                    if len(result.epochs) == epochs:
                        result.launch_to_end_s = t - t_launch
                        os.killpg(proc.pid, signal.SIGTERM)  # the official code validates after --noval's last epoch
            if len(result.epochs) == epochs:
                break
    watch.stop()
    proc.wait()
    if len(result.epochs) < epochs:
        raise RuntimeError(f"{side}: {len(result.epochs)} of {epochs} epochs seen (exit {proc.returncode}); "
                           f"see {log}:\n{log.read_text(errors='replace')[-3000:]}")
    result.peak_tree_rss_mib = watch.tree_rss / 2**20
    result.peak_main_rss_mib = watch.main_hwm / 2**10
    result.load_avg = statistics.mean(watch.loads) if watch.loads else os.getloadavg()[0]
    return result


def commands(args: argparse.Namespace, data: Path) -> dict[str, tuple[list[str], Path]]:
    common = ["--weights", args.weights, "--data", str(data), "--hyp", args.hyp, "--img-size", str(args.img_size),
              "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--workers", str(args.workers),
              "--device", args.device, "--noval", "--noplots", "--project", str(args.out / "runs"), "--exist-ok"]
    ours = [sys.executable, str(ROOT / "train.py"), *common, "--name", "ours", "--lr-schedule", "linear-yolov5"]
    official = [args.official_python, "train.py", *common, "--name", "official", "--noautoanchor"]
    return {"ours": (ours, ROOT), "official": (official, Path(args.official_repo))}


def report(runs: list[SideRun], images: int) -> dict:
    print(f"{'side':<10}{'epoch s':>9}{'img/s':>8}{'CPU s/ep':>10}{'(main':>8}{'+ workers)':>11}"
          f"{'peak RSS MiB':>14}{'main MiB':>10}{'load':>6}")
    by_side: dict[str, list[SideRun]] = {}
    for r in runs:
        s = r.steady()
        by_side.setdefault(r.side, []).append(r)
        print(f"{r.side:<10}{s.wall_s:>9.1f}{images / s.wall_s:>8.2f}{s.main_cpu_s + s.worker_cpu_s:>10.1f}"
              f"{s.main_cpu_s:>8.1f}{s.worker_cpu_s:>11.1f}{r.peak_tree_rss_mib:>14.0f}{r.peak_main_rss_mib:>10.0f}"
              f"{r.load_avg:>6.1f}")
    summary = {}
    for side, rs in by_side.items():
        st = [r.steady() for r in rs]
        summary[side] = {"epoch_s": statistics.mean(s.wall_s for s in st),
                         "cpu_s": statistics.mean(s.main_cpu_s + s.worker_cpu_s for s in st),
                         "main_cpu_s": statistics.mean(s.main_cpu_s for s in st),
                         "worker_cpu_s": statistics.mean(s.worker_cpu_s for s in st),
                         "peak_tree_rss_mib": max(r.peak_tree_rss_mib for r in rs),
                         "peak_main_rss_mib": max(r.peak_main_rss_mib for r in rs)}
    if {"ours", "official"} <= summary.keys():
        o, f = summary["ours"], summary["official"]
        ratio = {k: o[k] / f[k] for k in o if f[k]}
        summary["ratio"] = ratio
        print("ours/official: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()))
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-python", required=True, help="Python of a venv with the official code's requirements")
    p.add_argument("--official-repo", required=True, help="a checkout of the official YOLOv5 repository")
    p.add_argument("--weights", default=str(SHARED / "official/yolov5n.pt"))
    p.add_argument("--hyp", default=str(SHARED / "official/hyp/yolov5-hyp.scratch-low.yaml"))
    p.add_argument("--data", type=Path, default=None, help="a YOLO-form dataset YAML (default: a copy of coco128)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating ours and the official")
    p.add_argument("--sides", nargs="+", choices=["ours", "official"], default=["ours", "official"])
    p.add_argument("--out", type=Path, default=Path("runs/train-speed"))
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve() if args.data else prepare_data(args.out)
    cmds = commands(args, data)
    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}; {psutil.cpu_count()} CPUs")
    runs = []
    for k in range(args.repeats):
        for side in args.sides:
            cmd, cwd = cmds[side]
            runs.append(run_side(side, cmd, cwd, args.epochs, args.out / f"{side}-{k}.log"))
            e = runs[-1].epochs
            print(f"{side} run {k}: epochs " + ", ".join(f"{x.wall_s:.1f} s ({x.main_cpu_s + x.worker_cpu_s:.1f} CPU s)"
                                                       for x in e), flush=True)
    summary = report(runs, count_images(data))
    (args.out / "train_speed.json").write_text(json.dumps({"runs": [asdict(r) for r in runs], "summary": summary,
                                                            "commands": {k: " ".join(c) for k, (c, _) in cmds.items()}},
                                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
