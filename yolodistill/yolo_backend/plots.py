"""yolov5's training and val plots (labels.jpg, train_batch*.jpg, results.png; val's curves, confusion matrix and
val_batch*.jpg), made to work offline and on current Pillow by a small shim that enable_plots() applies once."""

from __future__ import annotations

import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import matplotlib
import numpy as np
import torch
from PIL import ImageFont

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # yolov5's import-time deprecation warnings (pkg_resources)
    import yolov5.utils.plots as yolov5_plots
    from yolov5.utils.general import CONFIG_DIR, FONT

from ._yolov5 import LOGGER

_lock = threading.Lock()


def _getsize(self, text, *args, **kwargs) -> tuple[int, int]:
    """Pillow < 10's font.getsize: the text's size plus its offset from the 'la' origin, i.e. getbbox's right and
    bottom (yolov5 draws a label at y - h so that its bottom meets the box)."""
    _, _, right, bottom = self.getbbox(text, *args, **kwargs)
    return right, bottom


def local_font(font: str | Path = FONT, size: int = 10):
    """yolov5's check_pil_font without its download: the font file, the one in yolov5's config folder, one
    installed on the system under that name, else Pillow's own font (scalable from Pillow 10.1 with FreeType)."""
    font = Path(font)
    for candidate in (font, CONFIG_DIR / font.name):
        if candidate.is_file():
            try:
                return ImageFont.truetype(str(candidate), size)
            except OSError:  # an unreadable or truncated file (an interrupted yolov5 download)
                pass
    try:
        return ImageFont.truetype(font.name, size)  # Pillow searches the system's font folders by name
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument, a small bitmap font
        return ImageFont.load_default()


def enable_plots() -> None:
    """Make yolov5 7.0.14's plots run here, once (idempotent); nothing else of yolov5 changes."""
    with _lock:
        # Pillow 10 removed getsize, which yolov5's Annotator calls for every PIL label (plot_images, val plots).
        for cls in (ImageFont.FreeTypeFont, ImageFont.ImageFont):
            if not hasattr(cls, "getsize"):
                cls.getsize = _getsize
        # yolov5's check_pil_font downloads Arial.ttf (and may pip-install Pillow) when the font is not local;
        # Annotator looks it up in yolov5.utils.plots, so replacing it there is enough.
        if yolov5_plots.check_pil_font is not local_font:
            yolov5_plots.check_pil_font = local_font


@contextmanager
def own_matplotlib_settings() -> Iterator[None]:
    """Keep yolov5's changes to matplotlib's settings inside its plot: ConfusionMatrix.plot calls seaborn.set,
    a process-wide theme that would restyle every later figure (the next run's, the quickstart's)."""
    with matplotlib.rc_context():
        yield


def plot_labels(labels: Sequence[np.ndarray], names: Mapping[int, str], save_dir: Path) -> None:
    """yolov5's labels.jpg and labels_correlogram.jpg from a dataset's labels (each (n, 5): class x y w h)."""
    stacked = np.concatenate([np.asarray(x).reshape(-1, 5) for x in labels], 0) if len(labels) else np.zeros((0, 5))
    if not len(stacked):  # yolov5 takes the number of classes from the largest label
        LOGGER.info("No labels to plot")
        return
    enable_plots()
    with own_matplotlib_settings():
        yolov5_plots.plot_labels(stacked, dict(names), Path(save_dir))


def plot_train_batch(imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str], file: Path,
                     names: Optional[Mapping[int, str]] = None) -> threading.Thread:
    """yolov5's plot_images of a training batch ((B, 3, H, W) in 0-1 or 0-255; targets (N, 6): image, class,
    x y w h normalised) in a background thread; the batch is copied first, as plot_images scales it in place.
    Images past `paths` (unlabeled ones appended to the batch) are captioned 'unlabeled'."""
    enable_plots()
    captions = [str(p) for p in paths] + ["unlabeled"] * (len(imgs) - len(paths))  # plot_images indexes one each
    return yolov5_plots.plot_images(imgs.detach().cpu().float().clone(), targets.detach().cpu().clone(),
                                    captions, Path(file), dict(names) if names else None)


def plot_results(csv_path: Path) -> Path:
    """yolov5's results.png (next to the csv): its ten panels, read from results.csv's columns by position."""
    enable_plots()
    with own_matplotlib_settings():
        yolov5_plots.plot_results(file=Path(csv_path))
    return Path(csv_path).with_name("results.png")


def wait_for_plots(timeout: float = 60.0) -> None:
    """Wait for yolov5's plot_images threads (train and val batches) so their files exist when a run ends; its
    `threaded` decorator names each thread after its target."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.endswith("(plot_images)"):
            t.join(max(0.0, deadline - time.monotonic()))
