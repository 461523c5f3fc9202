"""Plots saved to a run folder: the one matplotlib setup (headless, written atomically) and the
evaluation plots (precision-recall curves, the confusion matrix)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from utils.io import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path, dpi: int = 120) -> Path:
    """Lay out `fig`, write it to `out` atomically (the format from its suffix) and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(out).suffix.lstrip(".") or "png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write_bytes(out, lambda f: f.write(buf.getvalue()))


def plot_pr_curves(curves: dict[str, np.ndarray], out: str | Path) -> None:
    """curves: {"box": (101, K) precision at IoU 0.5 per class (-1 = no ground truth), "mask": ...}."""
    if not curves:  # no detections at all: nothing to draw
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.5), squeeze=False)
    recall = np.linspace(0, 1, 101)
    for ax, (kind, pr) in zip(axes[0], curves.items()):
        valid = (pr > -1).any(0)
        for k in np.nonzero(valid)[0]:
            ax.plot(recall, np.clip(pr[:, k], 0, None), color="grey", lw=0.5, alpha=0.5)
        if valid.any():
            mean = np.clip(pr[:, valid], 0, None).mean(1)
            ax.plot(recall, mean, color="blue", lw=2, label=f"all classes AP50 {mean.mean():.3f}")
            ax.legend(loc="lower left")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=f"{kind} PR curve (IoU 0.5)")
    save_figure(fig, out)


def plot_confusion(matrix: np.ndarray, names: list[str], out: str | Path, max_classes: int = 30) -> None:
    """Column-normalised confusion matrix of the classes seen most often (plus background)."""
    plt = pyplot()
    nc = len(names)
    seen = matrix[:nc, :nc].sum(0) + matrix[nc, :nc] + matrix[:nc, :nc].sum(1)
    top = sorted(np.argsort(-seen)[:max_classes][seen[np.argsort(-seen)[:max_classes]] > 0].tolist())
    idx = top + [nc]
    m = matrix[np.ix_(idx, idx)].astype(float)
    m = m / np.maximum(m.sum(0, keepdims=True), 1)
    labels = [names[i] for i in top] + ["background"]
    fig, ax = plt.subplots(figsize=(0.35 * len(idx) + 3, 0.35 * len(idx) + 2.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(idx)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(idx)), labels, fontsize=7)
    ax.set(xlabel="true", ylabel="predicted", title="confusion matrix (column-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    save_figure(fig, out)
