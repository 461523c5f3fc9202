"""Plots of the training labels for the run folder: label statistics, and batches as the model sees them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.io import atomic_write_bytes
from utils.plots import pyplot, save_figure
from utils.structures import Batch


def plot_labels(dataset, out: str | Path) -> None:
    """Class counts, box centres and box sizes (normalised by image size) of a split's labels."""
    index = dataset.index
    counts = np.bincount(index.classes, minlength=len(dataset.names))
    sizes = np.repeat(index.shapes[:, ::-1], np.diff(index.inst_offsets), axis=0).astype(np.float32)  # (M,2) w,h
    b = index.boxes
    centres = ((b[:, :2] + b[:, 2:]) / 2) / np.maximum(sizes, 1)
    wh = (b[:, 2:] - b[:, :2]) / np.maximum(sizes, 1)
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    top = np.argsort(-counts)[:30]
    ax[0].bar(range(len(top)), counts[top])
    ax[0].set_xticks(range(len(top)), [dataset.names[i] for i in top], rotation=90, fontsize=7)
    ax[0].set_title(f"instances per class ({len(index.classes)} in {len(index)} images)")
    ax[1].scatter(centres[:, 0], centres[:, 1], s=3, alpha=0.4)
    ax[1].set(xlim=(0, 1), ylim=(1, 0), title="box centres (x, y)")
    ax[2].scatter(wh[:, 0], wh[:, 1], s=3, alpha=0.4)
    ax[2].set(xlim=(0, 1), ylim=(0, 1), title="box sizes (w, h)")
    save_figure(fig, out, dpi=110)


def batch_mosaic(batch: Batch, names: list[str], max_images: int = 16) -> np.ndarray:
    """A BGR grid of the batch's images with their instance masks and boxes drawn."""
    from utils.draw import color

    n = min(len(batch), max_images)
    _, _, h, w = batch.images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i in range(n):
        img = np.ascontiguousarray(batch.images[i].permute(1, 2, 0).numpy()[:, :, ::-1])
        sel = (batch.batch_idx == i).nonzero().flatten().tolist()
        for k in sel:
            m = cv2.resize(batch.masks[k].numpy(), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            c = np.array(color(int(batch.classes[k])), np.float32)
            img[m] = (0.5 * img[m] + 0.5 * c).astype(np.uint8)
            x1, y1, x2, y2 = (int(v) for v in batch.boxes[k].tolist())
            cv2.rectangle(img, (x1, y1), (x2, y2), color(int(batch.classes[k])), 1)
            cls = int(batch.classes[k])
            cv2.putText(img, names[cls] if cls < len(names) else str(cls), (x1, max(y1 - 2, 8)), 0, 0.35,
                        color(cls), 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return grid


def plot_batch(batch: Batch, names: list[str], out: str | Path) -> np.ndarray:
    grid = batch_mosaic(batch, names)
    ok, encoded = cv2.imencode(Path(out).suffix, grid)
    if not ok:
        raise ValueError(f"{out}: OpenCV cannot write this image format")
    atomic_write_bytes(out, lambda f: f.write(encoded.tobytes()))
    return grid
