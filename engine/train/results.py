"""Per-epoch results: results.csv, TensorBoard scalars, and the training-curve plot at the end."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from utils.io import atomic_write_text
from utils.plots import pyplot, save_figure


class ResultsLog:
    def __init__(self, save_dir: Path, resume: bool = False):
        self.save_dir = Path(save_dir)
        self.csv_path = self.save_dir / "results.csv"
        self.rows: list[dict[str, float]] = self._read() if resume else []
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.save_dir))
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def _read(self) -> list[dict[str, float]]:
        if not self.csv_path.is_file():
            return []
        with self.csv_path.open() as f:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def image(self, tag: str, rgb, step: int) -> None:
        """rgb: uint8 (H,W,3)."""
        if self.tb is not None:
            self.tb.add_image(tag, rgb, step, dataformats="HWC")

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        """Append one row (rewritten atomically, so a crash never leaves a half-written csv)."""
        row = {"epoch": float(epoch), **{k: float(v) for k, v in values.items()}}
        self.rows = [r for r in self.rows if int(r["epoch"]) != epoch] + [row]
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (int(v) if k == "epoch" else f"{v:.6g}") for k, v in r.items()})
        atomic_write_text(self.csv_path, buf.getvalue())
        for k, v in values.items():
            self.scalar(k, v, epoch)

    def close(self, plot: bool = True) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if plot and self.rows:
            plot_results(self.rows, self.save_dir / "results.png")


def plot_results(rows: list[dict[str, float]], out: Path) -> None:
    plt = pyplot()
    keys = [k for k in rows[0] if k != "epoch" and not k.startswith(("lr/", "sys/"))]
    if not keys:
        return
    cols = min(5, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    epochs = [r["epoch"] + 1 for r in rows]
    for ax, key in zip(axes.flat, keys):
        ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker=".")
        ax.set_title(key, fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    save_figure(fig, out)
