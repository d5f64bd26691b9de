"""Per-epoch metrics to results.csv (yolov5's format), TensorBoard and a grid of every column's curve
(results.png for classifiers; results_all.png beside yolov5's own results.png for detectors)."""

from __future__ import annotations

import csv
import os
import math
from pathlib import Path
from typing import Mapping, Sequence

RESULTS_CSV = "results.csv"
RESULTS_PNG = "results.png"
# yolov5's validation columns, in the order val.run returns them.
METRIC_COLUMNS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
                  "val/box_loss", "val/obj_loss", "val/cls_loss")


class RunLogger:
    """Writes one row per epoch; the columns are fixed at construction from the declared loss names."""

    def __init__(self, save_dir: Path, columns: Sequence[str], *, tensorboard: bool = True):
        self.save_dir = Path(save_dir)
        self.columns = list(columns)
        self.csv_path = self.save_dir / RESULTS_CSV
        lines = self.csv_path.read_text().splitlines() if self.csv_path.is_file() else []
        if lines:  # a resumed run keeps its file's column order (an older version's, maybe)
            header = [c.strip() for c in lines[0].split(",")][1:]
            if set(header) == set(self.columns):
                self.columns = header
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.save_dir))
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                self._tb = None

    def log(self, epoch: int, values: Mapping[str, float]) -> None:
        """Append the epoch's row (same '%20s' layout as yolov5, so its users' scripts read it)."""
        row = [float(values.get(c, float("nan"))) for c in self.columns]
        write_header = not self.csv_path.exists()
        with open(self.csv_path, "a") as f:
            if write_header:
                f.write(("%20s," * (len(row) + 1) % tuple(["epoch"] + self.columns)).rstrip(",") + "\n")
            f.write(("%20.5g," * (len(row) + 1) % tuple([epoch] + row)).rstrip(",") + "\n")
        if self._tb is not None:
            for name, v in zip(self.columns, row):
                self._tb.add_scalar(name, v, epoch)
            self._tb.flush()

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after `epoch` (a resumed run redoes them)."""
        rows = read_results(self.csv_path)
        if not rows or all(r["epoch"] <= epoch for r in rows):
            return
        header = self.csv_path.read_text().splitlines()[0]
        kept = [line for line, r in zip(self.csv_path.read_text().splitlines()[1:], rows) if r["epoch"] <= epoch]
        # through a temp file and a rename: a kill right here must not lose the rows that stay
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        tmp.write_text("\n".join([header, *kept]) + "\n")
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_results(path: Path) -> list[dict[str, float]]:
    """Rows of a results.csv as dicts with stripped column names."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        return [{h: float(v) for h, v in zip(header, row)} for row in reader if row]


def plot_results(csv_path: Path, out: Path | None = None) -> Path | None:
    """One small panel per column of results.csv against epoch; returns the PNG path."""
    rows = read_results(csv_path)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in rows[0] if c != "epoch"]
    ncols = 5
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, tight_layout=True)
    epochs = [r["epoch"] for r in rows]
    for ax, col in zip(axes.flat, columns):
        ax.plot(epochs, [r[col] for r in rows], marker=".", linewidth=2, markersize=6)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    out = Path(out or Path(csv_path).with_name(RESULTS_PNG))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
