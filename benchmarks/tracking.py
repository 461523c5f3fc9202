#!/usr/bin/env python
"""Our tracker against ByteTrack of the `trackers` package on the same detections, on the
generated MOT sequences (data/sequences.py: real COCO objects cut out by their masks, moving,
crossing and hiding each other over an empty COCO scene).

    python benchmarks/tracking.py                          # all sequences, official yolov5n, CPU
    python benchmarks/tracking.py --names crossing,crowd --ref-python ../refvenv/bin/python
    python benchmarks/tracking.py --no-ref                 # ours only (no reference venv)
    python benchmarks/tracking.py --reuse                  # trackers again on the saved detections

Per sequence: the video is generated; the detector runs on every frame through our predictor
(letterbox, model, NMS; confidence --conf-thres); its results are saved as detect.py's
--save-json (frame, bbox xywh, score, category_id); both trackers read that same file; both
MOT files are scored by engine.eval.mot (TrackEval, IoU 0.5, class-agnostic, every ground-truth
box counts whatever its visibility). Ours also reads the appearance embeddings the detector's
backbone maps give each detection (engine.infer.track.appearance; saved as embeddings.npy beside
the detections; --no-appearance tracks without them). The tracking overhead is our tracker's
time per frame, with the pooling of the embeddings, over the detector's time per frame (decode
excluded, both measured in this run; with --reuse the detector's time is the earlier run's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.sequences import SEQUENCES, find_coco_source, generate  # noqa: E402
from engine.eval.mot import MotMetrics, MotWriter, evaluate, read_mot  # noqa: E402
from engine.infer.track import Tracker, TrackerConfig  # noqa: E402
from utils.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from utils.structures import Detections  # noqa: E402

# ../shared/data, or where GRADPATH_SHARED_DATA says (as the tests resolve it)
SHARED = Path(os.environ.get("GRADPATH_SHARED_DATA", ROOT.parent / "shared" / "data")).parent


def detect(video: Path, weights: str, device: str, img_size: int, conf: float
           ) -> tuple[list[dict], np.ndarray | None, float, float, float]:
    """detect.py-style results of every frame, their appearance embeddings (row for row; None
    for a model that gives none), the frame rate, the detector's ms per frame and the
    embeddings' ms per frame (the pooling, part of tracking's cost)."""
    from engine.infer.track.appearance import attach_embeddings
    from engine.eval.evaluator import to_coco_results
    from engine.infer.predictor import PredictOptions, Predictor
    from engine.infer.sources import SkipReport, open_source

    pred = Predictor(PredictOptions(weights=weights, source=str(video), img_size=img_size, conf_thres=conf,
                                    device=device, track=True))
    results, embeddings, seconds, embed_seconds, fps = [], [], 0.0, 0.0, 25.0
    for frame in open_source(str(video), SkipReport([])):
        t = time.perf_counter()
        x, rps = pred.preprocess([frame])
        raw = pred.backend(x)
        maps = pred.tap and pred.tap.take()
        dets = pred.postprocess([frame], tuple(x.shape[-2:]), rps, raw)[0]
        if dets.boxes.is_cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        seconds += t2 - t
        fps = frame.fps
        if maps is not None:  # as Predictor.postprocess does with them, timed on its own
            embeddings.append(attach_embeddings([dets], maps, pred.tap.strides, rps)[0].embeddings.numpy())
            embed_seconds += time.perf_counter() - t2
        results += [{**r, "frame": frame.index} for r in to_coco_results(dets, 0, list(range(len(pred.backend.meta.names))))]
    frames = frame.index + 1
    emb = np.concatenate(embeddings).astype(np.float32) if embeddings else None
    return results, emb, fps, 1e3 * seconds / frames, 1e3 * embed_seconds / frames


def per_frame(results: list[dict], frames: int, embeddings: np.ndarray | None = None) -> list[Detections]:
    """The saved results back as one Detections per frame (what both trackers see; only ours
    reads the embeddings)."""
    by = [[] for _ in range(frames)]
    for i, r in enumerate(results):
        by[r["frame"]].append(i)
    out = []
    for rows in by:
        xywh = torch.tensor([results[i]["bbox"] for i in rows], dtype=torch.float32).reshape(-1, 4)
        out.append(Detections(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                              torch.tensor([results[i]["score"] for i in rows], dtype=torch.float32),
                              torch.tensor([results[i]["category_id"] for i in rows], dtype=torch.int64),
                              embeddings=None if embeddings is None else torch.from_numpy(embeddings[rows])))
    return out


def track_ours(frames: list[Detections], fps: float, out: Path) -> float:
    """Write our MOT file; returns the tracker's ms per frame."""
    tracker, writer, seconds = Tracker(TrackerConfig(), fps=fps), MotWriter(out), 0.0
    for i, dets in enumerate(frames):
        t = time.perf_counter()
        tracked = tracker.update(dets, i)
        seconds += time.perf_counter() - t
        writer.add(i, tracked.track_ids.numpy(), tracked.boxes.numpy(), tracked.scores.numpy(), tracked.classes.numpy())
    writer.close()
    return 1e3 * seconds / len(frames)


def track_reference(dets_json: Path, fps: float, out: Path, python: str, script: str) -> None:
    subprocess.run([python, script, str(dets_json), str(out), "--fps", str(fps)], check=True, capture_output=True)


def row(name: str, who: str, m: MotMetrics) -> str:
    return (f"| {name} | {who} | {100 * m.mota:.1f} | {100 * m.idf1:.1f} | {100 * m.hota:.1f} | {m.id_switches} | "
            f"{m.fp} | {m.fn} | {m.mostly_tracked}/{m.gt_ids} | {m.tracker_ids} |")


def run_sequence(folder: Path, args) -> tuple[list[str], tuple[float, float], dict]:
    name = folder.name
    dets_json, emb_file, video = folder / "predictions.json", folder / "embeddings.npy", folder / f"{name}.mp4"
    if args.reuse:  # the detections and detector time of an earlier run of this script
        results, fps = json.loads(dets_json.read_text()), SEQUENCES[name].fps
        emb = np.load(emb_file) if emb_file.is_file() else None
        earlier = json.loads((args.out / "results.json").read_text())[name]
        det_ms, embed_ms = earlier["detect_ms"], earlier.get("embed_ms", 0.0)
    else:
        results, emb, fps, det_ms, embed_ms = detect(video, args.weights, args.device, args.img_size, args.conf_thres)
        atomic_write_text(dets_json, json.dumps(results))
        if emb is not None:
            atomic_write_bytes(emb_file, lambda f: np.save(f, emb))
    gt = read_mot(folder / "gt" / "gt.txt")
    frames = per_frame(results, int(gt.frames.max()), None if args.no_appearance else emb)
    track_ms = track_ours(frames, fps, folder / "ours.txt") + (0.0 if args.no_appearance else embed_ms)
    ours = evaluate(gt, read_mot(folder / "ours.txt"))
    lines, record = [row(name, "ours", ours)], {"ours": ours.as_dict(), "detect_ms": det_ms, "embed_ms": embed_ms,
                                        "track_ms": track_ms}
    if not args.no_ref:
        track_reference(dets_json, fps, folder / "bytetrack.txt", args.ref_python, args.ref_script)
        ref = evaluate(gt, read_mot(folder / "bytetrack.txt"))
        lines.append(row(name, "ByteTrack (trackers)", ref))
        record["bytetrack"] = ref.as_dict()
    return lines, (det_ms, track_ms), record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", default=",".join(SEQUENCES), help=f"comma-separated, of {', '.join(SEQUENCES)}")
    p.add_argument("--weights", default=str(SHARED / "official" / "yolov5n.pt"))
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--conf-thres", type=float, default=0.1, help="detector threshold (the reference keeps >= 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/bench/tracking"))
    p.add_argument("--ref-python", default=str(SHARED.parent / "refvenv" / "bin" / "python"),
                   help="python of the reference venv (default: refvenv beside ../shared)")
    p.add_argument("--ref-script", default=str(SHARED / "bench" / "bytetrack_reference.py"))
    p.add_argument("--no-ref", action="store_true", help="score ours only")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="added to every seed: other sequences of the same kinds (held out from tuning)")
    p.add_argument("--no-appearance", action="store_true",
                   help="our tracker without the detector-feature embeddings (motion and class only)")
    p.add_argument("--reuse", action="store_true",
                   help="track the detections an earlier run saved in --out (trackers only, no detector run)")
    args = p.parse_args()
    names = args.names.split(",")
    if unknown := [n for n in names if n not in SEQUENCES]:
        p.error(f"--names: unknown sequence {unknown[0]!r} (known: {', '.join(SEQUENCES)})")
    if not args.no_ref and not Path(args.ref_python).is_file():
        p.error(f"--ref-python {args.ref_python}: not found (the reference venv, see ../shared/bench); "
                "or pass --no-ref")
    if args.reuse and not (args.out / "results.json").is_file():
        p.error(f"--reuse: {args.out / 'results.json'} not found (run once without --reuse)")
    source = find_coco_source(SHARED / "data")
    print(f"objects and scenes from {source[0]}")
    folders = generate([replace(SEQUENCES[n], seed=SEQUENCES[n].seed + args.seed_offset) for n in names], args.out,
                       *source)
    print("| sequence | tracker | MOTA | IDF1 | HOTA | ID switches | FP | FN | mostly tracked | ids |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    times, records = [], {}
    for folder in folders:
        lines, t, records[folder.name] = run_sequence(folder, args)
        times.append(t)
        print("\n".join(lines), flush=True)
    det_ms, track_ms = np.mean(times, axis=0)
    print(f"\ndetection {det_ms:.1f} ms/frame ({args.device}, {args.img_size}), our tracker {track_ms:.2f} ms/frame (embeddings "
          f"included): "
          f"+{100 * track_ms / det_ms:.1f}% of the frame time")
    if args.reuse:  # keep the sequences not rerun
        records = {**json.loads((args.out / "results.json").read_text()), **records}
    atomic_write_text(args.out / "results.json", json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
