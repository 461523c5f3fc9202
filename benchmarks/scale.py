#!/usr/bin/env python
"""gradpath at full-COCO size, simulated: a COCO-train2017-sized set made from real images and
annotations (benchmarks/simulated_coco.py), then

  1. the label index, both label forms: cold build (cache removed) and warm load, seconds and
     peak memory, and its size on disk; beside it the references' label caches on the YOLO form
     (Ultralytics' YOLODataset, ../shared/bench/ultralytics_label_cache.py, and with --official-repo
     the official YOLOv5 LoadImagesAndLabels, benchmarks/official_label_cache.py; their own venv);
  2. `torchrun --nproc_per_node 2 train.py` (CPU, gloo) from launch to the first training step,
     cold and warm index cache, with the peak summed RSS and PSS of every process; how many
     processes built the index;
  3. loader memory: PSS of the loading process and its N workers over 3 windows of B batches
     (640, mosaic, batch 16), and its growth from the first window to the last; beside it the
     reference's loader on the YOLO form (benchmarks/ultralytics_loader_memory.py, its venv);
  4. `--cache ram` under torchrun (2 ranks, their workers): what each process maps of the one
     shared block at the first step, and the PSS summed over them (one copy, not one per rank).

    python benchmarks/scale.py                                  # 118,287 images
    python benchmarks/scale.py --images 20000 --ref-python ../refvenv/bin/python
    python benchmarks/scale.py --images 2000 --img-size 160 --batches 3 --ram-images 64 --no-reference  # quick

Prints markdown tables and writes the figures to OUT/scale.json. Timings on a shared machine are
noisy: compare rows of one run, not runs. Images are symlinks to the source's; the set is made
once in OUT and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.procwatch import Watch, mapping_memory, tree_memory  # noqa: E402
from benchmarks.simulated_coco import SimulatedSet, default_source, make_simulated  # noqa: E402

SHARED = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data")).parent
REF_VENV = ROOT.parent / "refvenv"  # where ../shared/bench/README.md makes it
GIB, MIB = 2**30, 2**20
FIRST_STEP = re.compile(r"\d+/\d+: +\d+%\|[^|\r\n]*\| *[1-9]\d*/\d+ \[")  # rank 0's "epoch/epochs" bar, a step done

INDEX_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from data.config import load_data_config
from data.datasets import index_cache, load_index
t1 = time.perf_counter()
cfg = load_data_config(sys.argv[2])
index = load_index(cfg, "train")
t2 = time.perf_counter()
cache = index_cache(cfg.splits["train"])
print("RESULT " + json.dumps({"seconds": t2 - t1, "imports_s": t1 - t0, "images": len(index),
      "instances": len(index.classes), "cache_bytes": cache.stat().st_size, "built_by": index.built_by}))
"""

LOADER_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from data.config import load_data_config
from data.loader import build_dataloader
from engine.config import Hyp
from utils.memory import process_tree_rss
img, batch, workers, windows, batches = map(int, sys.argv[3:8])
loader, _ = build_dataloader(load_data_config(sys.argv[2]), "train", img, batch, Hyp.load().aug,
                             shuffle=True, workers=workers)
it, peaks, t0 = iter(loader), [], time.perf_counter()
for w in range(windows):
    peak = 0
    for b in range(batches):
        next(it)
        if b % 10 == 9 or b == batches - 1:
            peak = max(peak, process_tree_rss(proportional=True))
    peaks.append(peak)
print("RESULT " + json.dumps({"pss": peaks, "seconds": time.perf_counter() - t0}))
"""


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 7200) -> tuple[str, dict]:
    """(output, {"seconds", "peak_rss", "peak_pss"}) of a command, its process tree watched."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    watch = Watch(proc.pid)
    out, _ = proc.communicate(timeout=timeout)
    peaks = watch.stop()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ...: exit {proc.returncode}\n{out[-3000:]}")
    return out, {"seconds": time.perf_counter() - t, "peak_rss": peaks.rss, "peak_pss": peaks.pss}


def result_line(out: str) -> dict:
    return json.loads(out.rsplit("RESULT ", 1)[1].splitlines()[0])


# ---- 1. the label index ----------------------------------------------------------------------------
def index_figures(s: SimulatedSet) -> list[dict]:
    from data.config import load_data_config
    from data.datasets import index_cache

    rows = []
    for form, data in (("COCO JSON", s.coco_yaml), ("YOLO txt", s.yolo_yaml)):
        cfg = load_data_config(data)
        index_cache(cfg.splits["train"]).unlink(missing_ok=True)
        for phase in ("cold", "warm"):
            out, m = run_measured([sys.executable, "-c", INDEX_CHILD, str(ROOT), str(data)])
            r = result_line(out)
            rows.append({"who": "gradpath", "form": form, "phase": phase, "seconds": r["seconds"],
                         "peak_rss": m["peak_rss"], "peak_pss": m["peak_pss"], "cache_bytes": r["cache_bytes"],
                         "images": r["images"], "instances": r["instances"]})
    return rows


def json_parse_figure(s: SimulatedSet) -> dict:
    """json.load of the instances JSON alone, after the modules a cold build has loaded (torch among
    them, ~0.5 GB): the parser's own share of a cold COCO build, on the same footing."""
    code = "import json, sys, time; sys.path.insert(0, sys.argv[2]); import data.datasets, utils.dist; " \
           "t = time.perf_counter(); json.load(open(sys.argv[1])); " \
           "print('RESULT', json.dumps({'seconds': time.perf_counter() - t}))"
    out, m = run_measured([sys.executable, "-c", code, str(s.annotations), str(ROOT)])
    return {"seconds": result_line(out)["seconds"], "peak_rss": m["peak_rss"], "peak_pss": m["peak_pss"],
            "json_bytes": s.annotations.stat().st_size}


def reference_index_figures(s: SimulatedSet, ref_python: str, bench: Path, official_repo: Path | None) -> list[dict]:
    """The reference label caches on the YOLO form, cold then warm: Ultralytics' (YOLODataset) and,
    given a checkout of it, the official YOLOv5 loader's (LoadImagesAndLabels); each script reports
    its own figures. Both write labels/train2017.cache, so each side runs cold, then warm, in turn."""
    sides = [("Ultralytics 8.4 (its label cache)", [str(bench / "ultralytics_label_cache.py"), str(s.images),
                                                     str(s.names_json)])]
    if official_repo is not None:
        sides.append(("official YOLOv5 (its labels .cache)", [str(ROOT / "benchmarks/official_label_cache.py"),
                                                              "--repo", str(official_repo), str(s.images)]))
    rows = []
    for who, cmd in sides:
        for phase in ("cold", "warm"):
            out, m = run_measured([ref_python, *cmd] + (["--warm"] if phase == "warm" else []),
                                  env={"YOLO_OFFLINE": "1"})
            hit = re.search(r"(\d+) images, (\d+) instances: ([\d.]+) s, peak RSS (\d+) MiB", out)
            if hit is None:
                raise RuntimeError(f"unexpected output of {cmd[0]}: {out[-2000:]}")
            cache = s.labels.with_suffix(".cache")
            rows.append({"who": who, "form": "YOLO txt", "phase": phase, "seconds": float(hit[3]),
                         "peak_rss": int(hit[4]) * MIB, "peak_pss": m["peak_pss"],
                         "cache_bytes": cache.stat().st_size if cache.is_file() else 0, "images": int(hit[1]),
                         "instances": int(hit[2])})
    return rows


def index_table(rows: list[dict], s: SimulatedSet) -> str:
    parse = next((r for r in rows if r["who"] == "json.load alone"), None)
    rows = [r for r in rows if r is not parse]
    lines = [f"| {s.n_images:,} images, {s.n_instances:,} instances | label form | cold build s | peak RSS MiB | "
             f"peak PSS MiB | warm load s | peak RSS MiB | cache on disk MiB |", "|---|---|" + "---:|" * 6]
    for who in dict.fromkeys(r["who"] for r in rows):
        for form in dict.fromkeys(r["form"] for r in rows if r["who"] == who):
            cold, warm = (next(r for r in rows if (r["who"], r["form"], r["phase"]) == (who, form, p))
                          for p in ("cold", "warm"))
            lines.append(f"| {who} | {form} | {cold['seconds']:.1f} | {cold['peak_rss'] / MIB:,.0f} | "
                         f"{cold['peak_pss'] / MIB:,.0f} | {warm['seconds']:.1f} | {warm['peak_rss'] / MIB:,.0f} | "
                         f"{warm['cache_bytes'] / MIB:,.0f} |")
    if parse:
        lines.append(f"| json.load alone, after the build's imports ({parse['json_bytes'] / MIB:,.0f} MiB JSON) | "
                     f"COCO JSON | "
                     f"{parse['seconds']:.1f} | {parse['peak_rss'] / MIB:,.0f} | {parse['peak_pss'] / MIB:,.0f} | | | |")
    return "\n".join(lines)


# ---- 2 and 4. torchrun to the first step --------------------------------------------------------------
def first_step(data: Path, out: Path, name: str, args, cache: str | None = None) -> dict:
    """Launch `torchrun --nproc_per_node 2 train.py`, stop it at its first training step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "train.py"), "--data", str(data), "--noval", "--epochs", "1", "--img-size", str(args.img_size),
           "--batch-size", str(args.startup_batch), "--workers", str(args.workers), "--device", "cpu",
           "--project", str(out / "runs"), "--name", name, "--exist-ok"] + (["--cache", cache] if cache else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=out, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    watch, text, found = Watch(proc.pid), [], threading.Event()
    reader = threading.Thread(target=_read_until, args=(proc, text, found), daemon=True)
    reader.start()
    ok = found.wait(args.startup_timeout)
    seconds = time.perf_counter() - t0
    mapped = mapping_memory(proc.pid, "gradpath-cache-ram") if ok and cache == "ram" else []
    pss_now = tree_memory(proc.pid, True) if ok else 0
    peaks = watch.stop()
    _stop(proc)
    reader.join(5)
    log = "".join(text)
    if not ok:
        raise RuntimeError(f"torchrun {name}: no training step within {args.startup_timeout} s\n{log[-3000:]}")
    return {"seconds": seconds, "peak_rss": peaks.rss, "peak_pss": peaks.pss, "pss_at_step": pss_now,
            "builds": log.count("building the label index"), "waited": log.count("waiting for local rank 0"),
            "mapped": mapped, "log": log}


def _read_until(proc, text: list, found: threading.Event) -> None:
    buf = ""
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
        if not chunk:
            return
        text.append(chunk)
        buf = (buf + chunk)[-4096:]
        if FIRST_STEP.search(buf):
            found.set()


def _stop(proc) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            if proc.poll() is not None:
                return


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def startup_figures(s: SimulatedSet, out: Path, args) -> list[dict]:
    from data.config import load_data_config
    from data.datasets import index_cache

    cfg = load_data_config(s.coco_yaml)
    cache = index_cache(cfg.splits["train"])
    cache.unlink(missing_ok=True)
    rows = []
    for phase in ("cold", "warm"):
        r = first_step(s.coco_yaml, out, f"startup-{phase}", args)
        r["phase"] = phase
        if phase == "cold":
            import numpy as np

            with np.load(cache) as z:
                r["built_by"] = json.loads(str(z["meta"]))["built_by"]
        rows.append(r)
    return rows


def startup_table(rows: list[dict], s: SimulatedSet, args) -> str:
    lines = [f"| torchrun --nproc_per_node 2, {s.n_images:,} images (COCO JSON), CPU gloo, {args.workers} workers "
             f"per rank | launch to first step s | peak RSS GiB (all processes) | peak PSS GiB | index builds | "
             f"ranks that waited |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['phase']} index cache | {r['seconds']:.1f} | {r['peak_rss'] / GIB:.2f} | "
                     f"{r['peak_pss'] / GIB:.2f} | {r['builds']} | {r['waited']} |")
    return "\n".join(lines)


def ram_cache_figures(source, out: Path, args) -> dict:
    small = make_simulated(source, args.ram_images, out / f"ram{args.ram_images}")
    r = first_step(small.coco_yaml, out, "ram-cache", args, cache="ram")
    mapped = r["mapped"]
    r.update(images=small.n_images, processes=len(mapped), block_bytes=max((m[1] for m in mapped), default=0),
             rss_sum=sum(m[2] for m in mapped), pss_sum=sum(m[3] for m in mapped))
    return r


def ram_table(r: dict) -> str:
    return "\n".join([
        f"| --cache ram, torchrun --nproc_per_node 2, {r['images']:,} images | block MiB | processes mapping it | "
        "its RSS summed MiB | its PSS summed MiB (what the node holds) | PSS of all processes MiB | index builds |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| at the first training step | {r['block_bytes'] / MIB:,.1f} | {r['processes']} | "
        f"{r['rss_sum'] / MIB:,.1f} | {r['pss_sum'] / MIB:,.1f} | {r['pss_at_step'] / MIB:,.0f} | {r['builds']} |"])


# ---- 3. loader memory ----------------------------------------------------------------------------------
def loader_figures(s: SimulatedSet, out: Path, args, ref_python: str | None) -> list[dict]:
    spec = [str(args.img_size), str(args.batch_size), str(args.workers), str(args.windows), str(args.batches)]
    rows = []
    text, m = run_measured([sys.executable, "-c", LOADER_CHILD, str(ROOT), str(s.coco_yaml), *spec])
    rows.append({"who": "gradpath (COCO JSON)", **result_line(text), "peak_pss": m["peak_pss"]})
    if ref_python:
        data = out / "ultralytics-data.yaml"
        names = json.loads(s.names_json.read_text())
        data.write_text(yaml.safe_dump({"path": str(s.root), "train": "images/train2017", "val": "images/train2017",
                                        "names": dict(enumerate(names))}))
        cmd = [ref_python, str(ROOT / "benchmarks/ultralytics_loader_memory.py"), str(data), *spec[:]]
        text, m = run_measured(cmd, env={"YOLO_OFFLINE": "1"})
        rows.append({"who": "Ultralytics 8.4 (YOLO txt)", **result_line(text), "peak_pss": m["peak_pss"]})
    return rows


def loader_table(rows: list[dict], args) -> str:
    head = " | ".join(f"window {k + 1} GiB" for k in range(args.windows))
    lines = [f"| loader PSS (process + {args.workers} workers), {args.img_size} px, mosaic, batch {args.batch_size}, "
             f"{args.windows} x {args.batches} batches | {head} | growth first -> last |",
             "|---|" + "---:|" * (args.windows + 1)]
    for r in rows:
        cells = " | ".join(f"{v / GIB:.2f}" for v in r["pss"])
        lines.append(f"| {r['who']} | {cells} | {100 * (r['pss'][-1] / r['pss'][0] - 1):+.1f}% |")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=118287, help="images of the simulated set (COCO train2017: 118,287)")
    p.add_argument("--out", default=str(ROOT / "runs/scale"), help="where the simulated sets and runs go")
    p.add_argument("--workers", type=int, default=2, help="loader workers (per rank under torchrun)")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16, help="the loader-memory batch")
    p.add_argument("--batches", type=int, default=200, help="batches per loader-memory window")
    p.add_argument("--windows", type=int, default=3, help="loader-memory windows (the issue's 'epochs')")
    p.add_argument("--startup-batch", type=int, default=4, help="torchrun runs: total batch size")
    p.add_argument("--startup-timeout", type=float, default=3600)
    p.add_argument("--ram-images", type=int, default=1000, help="images of the --cache ram run")
    p.add_argument("--ref-python", default=os.environ.get("GRADPATH_REF_PYTHON", str(REF_VENV / "bin/python")),
                   help="the reference venv's python (Ultralytics installed)")
    p.add_argument("--ref-bench", default=str(SHARED / "bench"), help="the reference-side scripts")
    p.add_argument("--official-repo", type=Path, default=ROOT.parent / "ref" / "yolov5",
                   help="a checkout of the official YOLOv5 code: its loader's label cache beside ours (skipped "
                        "where there is none)")
    p.add_argument("--no-reference", action="store_true", help="our figures only")
    p.add_argument("--skip", nargs="*", default=[], choices=["index", "startup", "loader", "ram"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = default_source()
    s = make_simulated(source, args.images, out / f"coco{args.images}")
    ref = None if args.no_reference or not Path(args.ref_python).is_file() else args.ref_python
    print(f"simulated set: {s.n_images:,} images, {s.n_instances:,} instances from {source.annotations}; "
          f"reference: {ref or 'none'}", flush=True)
    figures, tables = {}, []
    if "index" not in args.skip:
        rows = index_figures(s) + [{"who": "json.load alone", **json_parse_figure(s)}]
        if ref:
            official = args.official_repo if (args.official_repo / "utils" / "dataloaders.py").is_file() else None
            rows += reference_index_figures(s, ref, Path(args.ref_bench), official)
        figures["index"] = rows
        tables.append(index_table(rows, s))
        print(tables[-1] + "\n", flush=True)
    if "startup" not in args.skip:
        rows = startup_figures(s, out, args)
        figures["startup"] = [{k: v for k, v in r.items() if k != "log"} for r in rows]
        tables.append(startup_table(rows, s, args))
        print(tables[-1] + "\n", flush=True)
    if "loader" not in args.skip:
        rows = loader_figures(s, out, args, ref)
        figures["loader"] = rows
        tables.append(loader_table(rows, args))
        print(tables[-1] + "\n", flush=True)
    if "ram" not in args.skip:
        r = ram_cache_figures(source, out, args)
        figures["ram"] = {k: v for k, v in r.items() if k != "log"}
        tables.append(ram_table(r))
        print(tables[-1] + "\n", flush=True)
    (out / "scale.json").write_text(json.dumps({"args": vars(args), "figures": figures}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
