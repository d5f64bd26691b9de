"""yolov5's training and val plots in a run folder, offline: which files a run leaves (and none with --noplots),
yolov5's plot_results reading our results.csv, no network access, and the Pillow getsize shim."""

from __future__ import annotations

import shutil
import socket
import urllib.request
from pathlib import Path

import matplotlib
import pytest
import torch.hub
from PIL import ImageFont, features

from yolodistill import yolo_backend as yb
from yolodistill.cli import main
from yolodistill.run_logger import read_results

from .conftest import IMGSZ, make_tiny_dataset

pytestmark = pytest.mark.slow

# train.py's plots (labels, train batches, results.png) and its final val's (curves, confusion matrix, batches)
PLOTS = ["labels.jpg", "labels_correlogram.jpg", "train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg",
         "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png",
         "val_batch0_labels.jpg", "val_batch0_pred.jpg", "results.png", "results_all.png"]
# yolov5's results.png panels, in its order: the columns it reads by position (1-5, 8-10, 6-7)
YOLOV5_PANELS = ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                 "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]


def block_network(mp: pytest.MonkeyPatch, font_dir: Path) -> list[str]:
    """Every way yolov5 reaches the network raises (and is recorded); its font folder is empty, so the shim
    must fall back to a local font rather than yolov5's Arial.ttf download."""
    attempts: list[str] = []

    def refuse(name):
        def raise_(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"test: no network ({name})")
        return raise_

    mp.setattr(socket.socket, "connect", refuse("socket.connect"))
    mp.setattr(socket, "create_connection", refuse("socket.create_connection"))
    mp.setattr(urllib.request, "urlopen", refuse("urlopen"))
    mp.setattr(torch.hub, "download_url_to_file", refuse("torch.hub.download_url_to_file"))
    mp.setattr("yolodistill.yolo_backend.plots.CONFIG_DIR", font_dir)
    return attempts


@pytest.fixture(scope="module")
def plotted_run(teacher_weights, tiny_data, tmp_path_factory):
    """A one-epoch output-distillation run with unlabeled images and pseudo-labels, plots on, network blocked:
    (run folder, network attempts, labels given to plot_labels, matplotlib's face colour before and after)."""
    from yolodistill.detection.trainer import DistillTrainer, TrainOptions

    tmp = tmp_path_factory.mktemp("plots")
    unlabeled = tmp / "unlabeled"
    shutil.copytree(make_tiny_dataset(tmp / "other", n_train=8, n_val=1, seed=1).parent / "images" / "train", unlabeled)
    plotted = []
    real_plot_labels = yb.plot_labels
    face = matplotlib.rcParams["axes.facecolor"]
    with pytest.MonkeyPatch.context() as mp:
        attempts = block_network(mp, tmp / "no_fonts")
        mp.setattr(yb, "plot_labels", lambda labels, *a: (plotted.append(labels), real_plot_labels(labels, *a)))
        run = DistillTrainer(TrainOptions(cfg="yolov5n.yaml", data=str(tiny_data), epochs=1, imgsz=IMGSZ,
                                          batch_size=8, workers=0, device="cpu", project=str(tmp), name="p",
                                          noautoanchor=True, t_weights=str(teacher_weights), d_output=True,
                                          unlabeled=[str(unlabeled)], unlabeled_ratio=0.5, pseudo_labels=0.001)).run()
    return Path(run["save_dir"]), attempts, plotted, (face, matplotlib.rcParams["axes.facecolor"])


def test_a_run_leaves_yolov5s_plots_offline(plotted_run, tiny_data):
    import cv2

    save_dir, attempts, plotted, (face_before, face_after) = plotted_run
    assert attempts == []
    for name in PLOTS:
        assert cv2.imread(str(save_dir / name)) is not None, name
    # labels.jpg shows the labeled set's boxes: every line of its label files, not the unlabeled images' pseudo boxes
    label_lines = [line for f in (tiny_data.parent / "labels" / "train").glob("*.txt")
                   for line in f.read_text().splitlines() if line.strip()]
    assert len(plotted) == 1 and sum(len(x) for x in plotted[0]) == len(label_lines)
    assert face_after == face_before  # yolov5's confusion matrix sets seaborn's theme; it stays inside the plot


def test_noplots_leaves_none(tiny_data, tmp_path):
    assert main(["train", "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--imgsz", str(IMGSZ), "--epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path), "--name", "n",
                 "--noautoanchor", "--noplots"]) == 0
    left = {p.name for p in (tmp_path / "n").iterdir()}
    assert "results.csv" in left and not left & set(PLOTS)


def test_yolov5_plot_results_reads_our_columns(plotted_run, tmp_path, monkeypatch):
    """yolov5's own plot_results picks results.csv's columns by position: its panels must be its metrics."""
    import matplotlib.figure
    import yolov5.utils.plots

    csv = tmp_path / "results.csv"
    shutil.copy(plotted_run[0] / "results.csv", csv)
    row = read_results(csv)[0]
    assert "train/distill/output" in row and "x/unlabeled_images" in row  # a distillation run's extra columns
    drawn = {}

    def capture(fig, *args, **kwargs):
        drawn.update({ax.get_title(): list(ax.lines[0].get_ydata()) for ax in fig.axes if ax.lines})

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    yolov5.utils.plots.plot_results(file=csv)
    assert list(drawn) == YOLOV5_PANELS
    assert all(drawn[name] == pytest.approx([row[name]]) for name in YOLOV5_PANELS)


def test_fonts_come_from_this_machine(tmp_path, monkeypatch):
    """yolov5's label font (Arial.ttf, Arial.Unicode.ttf for other scripts) without a download."""
    import numpy as np
    import yolov5.utils.plots

    attempts = block_network(monkeypatch, tmp_path)
    yb.enable_plots()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        font = yolov5.utils.plots.check_pil_font(name, size=20)
        assert isinstance(font, ImageFont.FreeTypeFont) or not features.check("freetype2")
    annotator = yolov5.utils.plots.Annotator(np.zeros((64, 64, 3), np.uint8), pil=True)
    annotator.box_label([10, 30, 40, 60], "rect 0.9")  # calls font.getsize
    assert annotator.result().any()
    assert attempts == []


def test_getsize_is_getbbox_right_and_bottom():
    yb.enable_plots()
    fonts = [ImageFont.load_default(size=17), ImageFont.load_default_imagefont()]
    for font in fonts:
        for text in ("rect", "circle 0.93", "Ag"):
            _, _, right, bottom = font.getbbox(text)
            assert font.getsize(text) == (right, bottom)
            assert all(type(v) is int for v in font.getsize(text))


def test_enable_plots_is_idempotent_and_keeps_a_real_getsize(monkeypatch):
    import yolov5.utils.plots

    yb.enable_plots()
    patched = ImageFont.FreeTypeFont.getsize, yolov5.utils.plots.check_pil_font
    yb.enable_plots()
    assert (ImageFont.FreeTypeFont.getsize, yolov5.utils.plots.check_pil_font) == patched

    def own_getsize(self, text):
        return 1, 2

    monkeypatch.setattr(ImageFont.FreeTypeFont, "getsize", own_getsize)  # a Pillow that still has it
    yb.enable_plots()
    assert ImageFont.FreeTypeFont.getsize is own_getsize
