"""Prediction over any source: batched letterboxed inference, shared postprocess, and writers for
annotated images/videos, YOLO txt, COCO JSON and crops."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data.augment import letterbox, letterbox_shape
from engine.device import configure_cuda
from engine.eval.evaluator import to_coco_results
from engine.infer.backends import baked_note, load_backend
from engine.infer.pipeline import Behind, prefetch
from engine.infer.sources import VIDEO_SUFFIXES, Frame, SkipReport, is_stream, open_source
from utils.cli_args import round_to_stride
from utils.io import atomic_write_text
from utils.draw import draw, draw_trails
from utils.dist import select_device
from utils.paths import new_run_dir
from utils.postprocess import to_detections
from utils.structures import Detections, TrackedDetections

LOG = logging.getLogger("gradpath.detect")


@dataclass
class PredictOptions:
    weights: str
    source: str
    img_size: int | None = None  # None: the model's own (its training size)
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 300
    classes: list[int] | None = None
    agnostic_nms: bool = False
    device: str = ""
    half: bool = False
    compile: bool = False
    batch_size: int = 8
    save_txt: bool = False
    save_conf: bool = False
    save_json: bool = False
    save_crop: bool = False
    nosave: bool = False
    view_img: bool = False
    retina_masks: bool = False
    project: str = "runs/detect"
    name: str = "exp"
    exist_ok: bool = False
    line_thickness: int | None = None
    hide_labels: bool = False
    hide_conf: bool = False
    track: bool = False          # persistent ids per source (engine.infer.track)
    tracker: str = "bytetrack"


@dataclass
class Writers:
    save_dir: Path
    opt: PredictOptions
    names: list[str]
    category_ids: list[int]
    videos: dict[str, cv2.VideoWriter] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"images": 0, "frames": 0, "detections": 0})

    def write(self, frame: Frame, dets: Detections, trails: list | None = None) -> np.ndarray:
        """Save one frame's outputs. Tracked detections are drawn with their ids and `trails`; their
        txt goes to the source's MOT file (engine.infer.track.session), not to labels/."""
        opt = self.opt
        stem = Path(frame.path).stem
        name = f"{stem}_{frame.index}" if frame.is_video else stem
        self.counts["frames" if frame.is_video else "images"] += 1
        self.counts["detections"] += len(dets)
        ids = dets.track_ids.tolist() if isinstance(dets, TrackedDetections) else None
        annotated = draw(frame.image, dets, self.names, opt.line_thickness, opt.hide_labels, opt.hide_conf, ids=ids)
        if trails:
            draw_trails(annotated, trails, opt.line_thickness)
        if not opt.nosave:
            if frame.is_video:
                self._video(frame, annotated)
            else:
                cv2.imwrite(str(self.save_dir / Path(frame.path).name), annotated)
        if opt.save_txt and ids is None:
            self._txt(name, frame.image.shape[:2], dets)
        if opt.save_json:
            image_id = int(stem) if stem.isdigit() and not frame.is_video else name
            index = frame.index if ids is None else dets.frame  # an image sequence's frames count up
            rows = [{**r, "image_id": image_id, "file_name": Path(frame.path).name, "frame": index}
                    for r in to_coco_results(dets, 0, self.category_ids)]
            for r, tid in zip(rows, ids or []):
                r["track_id"] = tid
            self.results += rows
        if opt.save_crop:
            self._crops(name, frame.image, dets)
        return annotated

    def _video(self, frame: Frame, img: np.ndarray) -> None:
        writer = self.videos.get(frame.path)
        if writer is None:
            out = self.save_dir / (Path(frame.path).stem + ".mp4")
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps or 30.0, (w, h))
            self.videos[frame.path] = writer
        writer.write(img)

    def _txt(self, name: str, shape: tuple[int, int], dets: Detections) -> None:
        """YOLO format: class + normalised polygon (masks) or cx cy w h (boxes) [+ conf]."""
        h, w = shape
        lines = []
        for k in range(len(dets)):
            cls, conf = int(dets.classes[k]), float(dets.scores[k])
            if dets.masks is not None:
                coords = mask_polygon(dets.masks[k].cpu().numpy()) / np.array([w, h])
            else:
                x1, y1, x2, y2 = dets.boxes[k].tolist()
                coords = np.array([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
            if coords.size == 0:
                continue
            vals = " ".join(f"{v:.6f}" for v in coords.reshape(-1))
            lines.append(f"{cls} {vals}" + (f" {conf:.6g}" if self.opt.save_conf else ""))
        labels = self.save_dir / "labels"
        labels.mkdir(exist_ok=True)
        (labels / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))

    def _crops(self, name: str, image: np.ndarray, dets: Detections) -> None:
        for k, (box, c) in enumerate(zip(dets.boxes.tolist(), dets.classes.tolist())):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            crop = image[max(y1, 0):y2, max(x1, 0):x2]
            if crop.size:
                folder = self.save_dir / "crops" / self.names[c]
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{name}_{k}.jpg"), crop)

    def close(self) -> None:
        for w in self.videos.values():
            w.release()
        if self.opt.save_json:
            atomic_write_text(self.save_dir / "predictions.json", json.dumps(self.results))


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """The largest outer contour of a bool mask as (K,2) pixel points (empty when no pixels)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2))
    return max(contours, key=len).reshape(-1, 2).astype(np.float64)


def bgr_to_input(images: list[np.ndarray]) -> np.ndarray:
    """Letterboxed BGR (h,w,3) uint8 images of one shape -> the model's (B,3,h,w) float32 RGB input
    in [0, 1], one pass per channel. The same values as flipping, transposing, copying and then
    dividing as floats, in a third of the time on one CPU thread (0.8 against 2.9 ms at 640x640),
    which is what the pipeline has beside an ONNX Runtime or OpenVINO model."""
    h, w = images[0].shape[:2]
    x = np.empty((len(images), 3, h, w), np.float32)
    for i, image in enumerate(images):
        for c in range(3):
            np.divide(image[:, :, 2 - c], np.float32(255), out=x[i, c], casting="unsafe")
    return x


class Predictor:
    def __init__(self, opt: PredictOptions):
        self.opt = opt
        if opt.track:  # before the model loads: a source that is no sequence is refused at once
            from engine.infer.track.session import check_sequence

            check_sequence(opt.source)
        self.device = select_device(opt.device, several=True)
        configure_cuda(self.device, fixed_shapes=is_stream(opt.source) or Path(opt.source).suffix.lower() in VIDEO_SUFFIXES)
        self.backend = load_backend(opt.weights, self.device, opt.half, opt.compile)
        meta = self.backend.meta
        self.img_size = round_to_stride(opt.img_size, meta.stride) if opt.img_size else meta.img_size
        note = baked_note(meta, opt.conf_thres, opt.iou_thres, opt.max_det, agnostic=opt.agnostic_nms,
                          retina_masks=opt.retina_masks)
        if note:
            LOG.warning("%s", note)
        self.skips = SkipReport([])
        self.tap = self._feature_tap() if opt.track else None

    def _feature_tap(self):
        """Tracking's appearance cue: the detector's own features, which only a PyTorch model shows."""
        from engine.infer.backends import TorchBackend
        from engine.infer.track.appearance import FeatureTap

        if isinstance(self.backend, TorchBackend):
            return FeatureTap(self.backend.model)
        LOG.info("tracking without the appearance cue: %s is not a PyTorch checkpoint (its features are not "
                 "reachable); ids follow motion, class%s", self.opt.weights,
                 " and masks" if self.backend.meta.task == "segment" else "")
        return None

    def input_shape(self, frame: Frame) -> tuple[int, int]:
        """(h, w) the frame is letterboxed to: a static ONNX export's input size, else img_size on
        the long side with the short side padded only to the next stride multiple, as the
        official detect.py does (square batches change the detections)."""
        return getattr(self.backend, "fixed", None) or letterbox_shape(
            frame.image.shape[:2], self.img_size, auto=True, stride=self.backend.meta.stride)[1]

    def preprocess(self, frames: list[Frame]) -> tuple[torch.Tensor, list]:
        """frames: all of one input_shape (see _batches)."""
        imgs, rps = [], []
        fixed = getattr(self.backend, "fixed", None)
        for f in frames:
            img, rp = letterbox(f.image, fixed or self.img_size, auto=not fixed, stride=self.backend.meta.stride)
            imgs.append(img)
            rps.append(rp)
        if self.device.type == "cpu":
            return torch.from_numpy(bgr_to_input(imgs)), rps
        # to the GPU as bytes (a quarter of the transfer), converted there
        x = torch.from_numpy(np.ascontiguousarray(np.stack(imgs)[..., ::-1].transpose(0, 3, 1, 2)))
        return x.to(self.device).float() / 255.0, rps

    def infer(self, frames: list[Frame]) -> list[Detections]:
        out = []
        for batch in self._batches(frames):
            x, rps = self.preprocess(batch)
            raw = self.backend(x)
            out += self.postprocess(batch, tuple(x.shape[-2:]), rps, raw, self.tap and self.tap.take())
        return out

    def postprocess(self, frames: list[Frame], shape: tuple[int, int], rps: list, out,
                    maps: list[torch.Tensor] | None = None) -> list[Detections]:
        """out: the backend's RawOutput or End2EndOutput for these frames; maps: the backbone maps
        FeatureTap kept from the same call, to give each detection its embedding."""
        dets = to_detections(out, shape, [f.image.shape[:2] for f in frames], rps, self.opt.conf_thres,
                             self.opt.iou_thres, self.opt.max_det, classes=self.opt.classes,
                             agnostic=self.opt.agnostic_nms, retina_masks=self.opt.retina_masks)
        if maps is None:
            return dets
        from engine.infer.track.appearance import attach_embeddings

        return attach_embeddings(dets, maps, self.tap.strides, rps)

    def run(self) -> dict:
        """Predict over the whole source. Decoding and letterboxing run ahead of the model in one
        thread, postprocessing, drawing and encoding behind it in another (in order), so the
        model is not kept waiting by I/O; with --view-img the windows are driven from this thread."""
        opt = self.opt
        if opt.track:
            from engine.infer.track.session import TrackingRun  # scipy only when tracking
        frames = open_source(opt.source, self.skips)  # raises SourceError before a run folder is made
        save_dir = new_run_dir(opt.project, opt.name, opt.exist_ok)
        writers = Writers(save_dir, opt, list(self.backend.meta.names), list(self.backend.meta.category_ids))
        tracking = TrackingRun(opt.tracker, opt.source, save_dir if opt.save_txt else None) if opt.track else None
        t0 = time.perf_counter()
        bar = tqdm(desc="detect", unit="frame", bar_format="{l_bar}{n_fmt} [{elapsed}, {rate_fmt}]")

        def finish(item) -> None:
            batch, shape, rps, raw, maps = item
            for frame, dets in zip(batch, self.postprocess(batch, shape, rps, raw, maps)):
                trails = None
                if tracking:  # here, in the writer thread, every source's frames come in order
                    dets = tracking.update(frame, dets)
                    trails = tracking.trails(frame, dets)
                annotated = writers.write(frame, dets, trails)
                if opt.view_img:
                    cv2.imshow(frame.path, annotated)
                    cv2.waitKey(1)
            bar.update(len(batch))

        behind = None if opt.view_img else Behind(finish)
        try:
            ahead = 1 if is_stream(opt.source) else 4  # a live stream: stay on the newest frame
            for batch, x, rps in prefetch(((b, *self.preprocess(b)) for b in self._batches(frames)), ahead):
                raw = self.backend(x)  # then the features it read, before the next call replaces them
                item = (batch, tuple(x.shape[-2:]), rps, raw, self.tap and self.tap.take())
                if behind:
                    behind.submit(item)
                else:
                    finish(item)
            if behind:
                behind.close()
        finally:
            if behind and behind.thread.is_alive():  # an error above: stop the writer thread first
                try:
                    behind.close()
                except Exception:  # noqa: BLE001 - the error already propagating is the one to report
                    pass
            writers.close()
            mot_files = tracking.close() if tracking else []
            bar.close()
        summary = {**writers.counts, "skipped": len(self.skips.skipped), "save_dir": str(save_dir),
                   "seconds": time.perf_counter() - t0}
        if tracking:
            summary["tracks"] = asdict(tracking.counts())
            LOG.info("%s%s", tracking.summary(), f"; MOT files in {save_dir / 'tracks'}" if mot_files else "")
        if self.skips.skipped:
            LOG.warning("%s", self.skips)
        LOG.info("%d images, %d video frames, %d detections, %d skipped in %.1fs. Results saved to %s",
                 summary["images"], summary["frames"], summary["detections"], summary["skipped"],
                 summary["seconds"], save_dir)
        return summary

    def _batches(self, frames):
        """Frames grouped for one forward pass: up to --batch-size consecutive images of one input
        shape, video frames one by one (a video's frames go out in order and its writer sees them
        as they come)."""
        pending: list[Frame] = []
        shape = None
        for frame in frames:
            if pending and self.input_shape(frame) != shape:
                yield pending
                pending = []
            pending.append(frame)
            shape = self.input_shape(frame)
            if frame.is_video or len(pending) >= self.opt.batch_size:
                yield pending
                pending = []
        if pending:
            yield pending
