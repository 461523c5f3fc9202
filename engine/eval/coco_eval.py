"""COCO bbox/segm scoring against the dataset's own annotation JSON. pycocotools is the
reference; faster-coco-eval (C++ evaluateImg/accumulate) is the default backend because the tests
show identical stats (tests/test_eval.py) and benchmarks/coco_eval.py shows it faster. Imports no
torch, so `val.py --ann-json A --pred-json P` starts fast."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

# COCOeval's 12 stats in its order: name, then its printed row (measure, IoU range, area, max detections)
STATS = (("AP", "Average Precision", "0.50:0.95", "all", 100), ("AP50", "Average Precision", "0.50", "all", 100),
         ("AP75", "Average Precision", "0.75", "all", 100), ("APs", "Average Precision", "0.50:0.95", "small", 100),
         ("APm", "Average Precision", "0.50:0.95", "medium", 100),
         ("APl", "Average Precision", "0.50:0.95", "large", 100), ("AR1", "Average Recall", "0.50:0.95", "all", 1),
         ("AR10", "Average Recall", "0.50:0.95", "all", 10), ("AR100", "Average Recall", "0.50:0.95", "all", 100),
         ("ARs", "Average Recall", "0.50:0.95", "small", 100), ("ARm", "Average Recall", "0.50:0.95", "medium", 100),
         ("ARl", "Average Recall", "0.50:0.95", "large", 100))
STAT_NAMES = [row[0] for row in STATS]


class EvaluationError(RuntimeError):
    """Scoring failed; the message says why (never swallowed)."""


def load_results(pred: str | Path | list, gt) -> list[dict]:
    """Read a COCO results file (or list) and check it against the ground truth's ids."""
    if isinstance(pred, (str, Path)):
        try:
            pred = json.loads(Path(pred).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EvaluationError(f"{pred}: cannot read results JSON: {e}") from None
    if not isinstance(pred, list):
        raise EvaluationError("results must be a JSON list of detections")
    img_ids, cat_ids = set(gt.getImgIds()), set(gt.getCatIds())
    for k, d in enumerate(pred):
        if d.get("image_id") not in img_ids:
            raise EvaluationError(f"results[{k}]: image_id {d.get('image_id')} is not in the annotation file")
        if d.get("category_id") not in cat_ids:
            raise EvaluationError(f"results[{k}]: category_id {d.get('category_id')} is not in the annotation file")
    return pred


BACKENDS = ("faster", "pycocotools")


def default_backend() -> str:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster"


def _classes(backend: str):
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, lambda gt, dt, t: COCOeval_faster(gt, dt, t, print_function=lambda *a, **k: None)
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"unknown COCO evaluation backend '{backend}' (known: {', '.join(BACKENDS)})")


def load_gt(ann_json: str | Path, backend: str | None = None):
    COCO, _ = _classes(backend or default_backend())
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_json))
    except Exception as e:  # pycocotools raises bare AssertionError/KeyError on bad files
        raise EvaluationError(f"{ann_json}: cannot load COCO annotations: {type(e).__name__}: {e}") from e


def score(ann_json: str | Path, results: str | Path | list, iou_types: tuple[str, ...] = ("bbox", "segm"),
          img_ids: list[int] | None = None, gt=None, backend: str | None = None,
          use_cats: bool = True) -> dict[str, dict]:
    """{iou_type: {"stats": {name: value}, "per_class": {cat_id: AP50-95}}}. `gt` must come from
    load_gt() with the same backend. use_cats=False scores class-agnostically (COCO's useCats=0:
    a detection may match any ground truth), as a --single-cls model must be; per_class then
    holds one entry, under the first category id."""
    backend = backend or default_backend()
    _, COCOeval = _classes(backend)
    gt = gt or load_gt(ann_json, backend)
    dets = load_results(results, gt)
    out = {}
    for iou_type in iou_types:
        usable = [d for d in dets if ("segmentation" in d if iou_type == "segm" else "bbox" in d)]
        if not usable:
            out[iou_type] = {"stats": dict.fromkeys(STAT_NAMES, 0.0), "per_class": {}, "P": 0.0, "R": 0.0}
            continue
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                dt = gt.loadRes([dict(d) for d in usable])
                ev = COCOeval(gt, dt, iou_type)
                ev.params.useCats = int(use_cats)
                if img_ids is not None:
                    ev.params.imgIds = list(img_ids)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
        except Exception as e:
            raise EvaluationError(f"COCO {iou_type} evaluation failed: {type(e).__name__}: {e}") from e
        precision = ev.eval["precision"]  # (T, R, K, A, M)
        per_class = {}
        cat_ids = ev.params.catIds if use_cats else ev.params.catIds[:1]
        for k, cat in enumerate(cat_ids):
            p = precision[:, :, k, 0, -1]
            per_class[int(cat)] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        out[iou_type] = {"stats": {n: float(v) for n, v in zip(STAT_NAMES, ev.stats)}, "per_class": per_class,
                         "pr50": np.asarray(precision[0, :, :, 0, -1]), "cat_ids": [int(c) for c in cat_ids]}
        out[iou_type].update(best_f1(out[iou_type]["pr50"]))
    return out


def best_f1(pr50: np.ndarray) -> dict[str, float]:
    """Precision and recall at IoU 0.5 where each class's F1 peaks, averaged over the classes that
    have ground truth (COCO marks the others -1). pr50: (101 recall points, K classes)."""
    recall = np.linspace(0, 1, pr50.shape[0])[:, None]
    valid = (pr50 > -1).any(0)
    if not valid.any():
        return {"P": 0.0, "R": 0.0}
    p = np.clip(pr50[:, valid], 0, None)
    f1 = 2 * p * recall / np.maximum(p + recall, 1e-9)
    k = f1.argmax(0)
    cols = np.arange(p.shape[1])
    return {"P": float(p[k, cols].mean()), "R": float(recall[k, 0].mean())}


def format_tables(scores: dict[str, dict]) -> str:
    lines = []
    for iou_type, s in scores.items():
        lines.append(f"--- {('box' if iou_type == 'bbox' else 'mask')} ({iou_type}) ---")
        lines.append(_standard_table(s["stats"], iou_type))
    return "\n".join(lines)


def _standard_table(stats: dict[str, float], iou_type: str) -> str:
    return "\n".join(f" {t:<18} {'(AP)' if t.endswith('Precision') else '(AR)'} @[ IoU={iou:<9} | area={area:>6} | "
                     f"maxDets={md:>3} ] = {stats[k]:.3f}" for k, t, iou, area, md in STATS)


def per_class_table(per_class: dict[int, float], names_by_id: dict[int, str]) -> str:
    vals = [(names_by_id.get(c, str(c)), v) for c, v in per_class.items() if not np.isnan(v)]
    return "\n".join(f"  {n:<20} {v:.3f}" for n, v in vals)
