"""Run a model over a validation loader and score it with COCO bbox and segm metrics."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine.eval.coco_eval import format_tables, load_gt, per_class_table, score
from engine.device import memory_format
from engine.eval.metrics import ConfusionMatrix
from utils.geometry import xyxy_to_xywh_coco
from utils.io import atomic_write_text
from utils.masks import encode_rle
from utils.plots import plot_confusion, plot_pr_curves
from utils.postprocess import to_detections
from utils.structures import Detections, End2EndOutput, RawOutput


@dataclass
class EvalResult:
    box: dict[str, float]
    mask: dict[str, float]
    per_class: dict[str, dict[int, float]] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)  # ms per image
    names_by_id: dict[int, str] = field(default_factory=dict)
    n_images: int = 0
    n_detections: int = 0
    quick: dict[str, float] = field(default_factory=dict)  # P and R at the best-F1 point, IoU 0.5

    @property
    def fitness(self) -> float:
        """0.1 AP50 + 0.9 AP50-95, averaged over box and (when present) mask."""
        parts = [self.box] + ([self.mask] if self.mask else [])
        return float(np.mean([0.1 * p["AP50"] + 0.9 * p["AP"] for p in parts]))

    def summary(self) -> dict[str, float]:
        out = {f"metrics/box_{k}": self.box[k] for k in ("AP50", "AP")}
        if self.mask:
            out.update({f"metrics/mask_{k}": self.mask[k] for k in ("AP50", "AP")})
        out.update({f"metrics/{k}": v for k, v in self.quick.items()})
        return out

    def table(self, verbose: bool = False) -> str:
        scores = {"bbox": {"stats": self.box}}
        if self.mask:
            scores["segm"] = {"stats": self.mask}
        quick = "  ".join(f"{k} {v:.3f}" for k, v in self.quick.items())
        text = [f"{self.n_images} images, {self.n_detections} detections" + (f"; {quick}" if quick else ""),
                format_tables(scores),
                "speed: " + ", ".join(f"{k} {v:.1f} ms" for k, v in self.speed.items()) + " per image"]
        if verbose:
            for kind, pc in self.per_class.items():
                text += [f"per-class AP50-95 ({kind}):", per_class_table(pc, self.names_by_id)]
        return "\n".join(text)


def to_coco_results(dets: Detections, image_id: int, category_ids: list[int]) -> list[dict]:
    boxes = xyxy_to_xywh_coco(dets.boxes).cpu().numpy()
    scores, classes = dets.scores.cpu().numpy(), dets.classes.cpu().numpy()
    rles = encode_rle(dets.masks.cpu().numpy()) if dets.masks is not None else [None] * len(boxes)
    out = []
    for b, s, c, r in zip(boxes, scores, classes, rles):
        d = {"image_id": int(image_id), "category_id": int(category_ids[int(c)]),
             "bbox": [round(float(v), 3) for v in b], "score": round(float(s), 5)}
        if r is not None:
            d["segmentation"] = r
        out.append(d)
    return out


@torch.no_grad()
def predict_loader(model, loader, device: torch.device, conf_thres: float, iou_thres: float,
                   max_det: int, half: bool, retina_masks: bool, category_ids: list[int], on_image=None,
                   multi_label: bool = True):
    """(COCO results list, image ids, ms per image for pre-process / inference / postprocess);
    on_image(image_id, Detections) is called for each image when given. model: an nn.Module
    (training's EMA, val.py's checkpoint) or an inference backend (engine.infer.backends: any
    exported format, which takes float32 0-1 images and keeps its own precision)."""
    module = model if isinstance(model, nn.Module) else None
    results, img_ids, times = [], [], np.zeros(3)
    dtype = torch.float16 if half and device.type == "cuda" and module is not None else torch.float32
    fmt = memory_format(device, "inference") if module is not None else torch.contiguous_format
    if module is not None:
        module.eval()
        if next(module.parameters()).dtype != dtype:  # a copy: the caller's (EMA) weights never round-trip through fp16
            model = copy.deepcopy(module)
        model = model.to(device=device, dtype=dtype, memory_format=fmt)
    for batch in tqdm(loader, desc="val", bar_format="{l_bar}{bar:10}{r_bar}", leave=False):
        t0 = time.perf_counter()
        images = (batch.images.to(device, non_blocking=True).to(dtype) / 255.0).contiguous(memory_format=fmt)
        t1 = time.perf_counter()
        out = model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if not isinstance(out, End2EndOutput):
            out = RawOutput(out[0].float(), None if out[1] is None else out[1].float())
        dets = to_detections(out, tuple(images.shape[-2:]), batch.orig_shapes, batch.ratio_pads, conf_thres, iou_thres,
                             max_det, multi_label=multi_label, retina_masks=retina_masks)
        for d, image_id in zip(dets, batch.image_ids):
            results += to_coco_results(d, image_id, category_ids)
            if on_image is not None:
                on_image(int(image_id), d)
            img_ids.append(int(image_id))
        times += [t1 - t0, t2 - t1, time.perf_counter() - t2]
    if module is not None:
        module.to(memory_format=torch.contiguous_format)
    return results, img_ids, times * 1e3 / max(len(img_ids), 1)


def has_masks(model) -> bool:
    """A segmentation model: an nn.Module with mask coefficients, or a backend whose file says so."""
    return getattr(model, "nm", 0) > 0 if isinstance(model, nn.Module) else model.meta.task == "segment"


def evaluate(model, loader, dataset, device: torch.device, conf_thres: float = 0.001,
             iou_thres: float = 0.65, max_det: int = 300, half: bool = False, save_dir: Path | None = None,
             save_json: bool = False, plots: bool = False, verbose: bool = False,
             retina_masks: bool = False, multi_label: bool = True) -> EvalResult:
    """COCO AP^box / AP^mask of `model` (an nn.Module or an inference backend) on `dataset`
    (scored against dataset.ann_file)."""
    single_cls = getattr(dataset, "single_cls", False)
    names = ["item"] if single_cls else list(dataset.names)
    confusion = ConfusionMatrix(len(names)) if plots else None
    on_image = None
    if confusion is not None:
        row = {int(i): k for k, i in enumerate(dataset.index.image_ids)}

        def on_image(image_id: int, d: Detections) -> None:
            boxes, classes, _ = dataset.index.instances(row[image_id])
            confusion.update(d.boxes, d.scores, d.classes, boxes, np.zeros_like(classes) if single_cls else classes)

    results, img_ids, ms = predict_loader(model, loader, device, conf_thres, iou_thres, max_det, half,
                                          retina_masks, dataset.category_ids, on_image, multi_label)
    if save_json and save_dir is not None:
        atomic_write_text(Path(save_dir) / "predictions.json", json.dumps(results))
    gt = load_gt(dataset.ann_file)  # the default backend, as score() below
    masks = has_masks(model)
    scores = score(dataset.ann_file, results, ("bbox", "segm") if masks else ("bbox",), img_ids, gt,
                   use_cats=not single_cls)
    names_by_id = {cid: n for cid, n in zip(dataset.category_ids, names)}
    if plots and save_dir is not None:
        plot_pr_curves({("box" if k == "bbox" else "mask"): v["pr50"] for k, v in scores.items() if "pr50" in v},
                       Path(save_dir) / "PR_curve.png")
        plot_confusion(confusion.matrix, names, Path(save_dir) / "confusion_matrix.png")
    quick = {f"{'box' if k == 'bbox' else 'mask'}_{m}": v[m] for k, v in scores.items() for m in ("P", "R")}
    return EvalResult(scores["bbox"]["stats"], scores["segm"]["stats"] if masks else {},
                      {k: v["per_class"] for k, v in scores.items()},
                      {"pre-process": ms[0], "inference": ms[1], "postprocess": ms[2]}, names_by_id,
                      len(img_ids), len(results), quick)
