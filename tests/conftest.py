"""Shared fixtures: a tiny generated YOLO dataset and a tiny trained teacher, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLOv5_VERBOSE", "False")  # yolov5 reads this at import to quiet its logger
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (pyproject's addopts): each torch on one thread, and so every process
    # the tests start (torchrun ranks, killed runs, benchmark workers), or the workers' threads fight for the
    # cores and every step gets many times slower. Tiny test models gain nothing from a second thread.
    os.environ["OMP_NUM_THREADS"] = "1"

IMGSZ = 64


def make_tiny_dataset(root: Path, n_train: int = 24, n_val: int = 8, size: int = IMGSZ, seed: int = 0) -> Path:
    """Images with filled rectangles (class 0) and circles (class 1) on noise, YOLO labels, and a data yaml."""
    import cv2

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(rng.integers(1, 4)):
                cls = int(rng.integers(0, 2))
                w, h = (int(x) for x in rng.integers(size // 6, size // 2, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                color = tuple(int(c) for c in rng.integers(120, 255, 3))
                if cls == 0:
                    cv2.rectangle(img, (x0, y0), (x0 + w - 1, y0 + h - 1), color, -1)
                else:
                    r = min(w, h) // 2
                    w = h = 2 * r
                    cv2.circle(img, (x0 + r, y0 + r), r, color, -1)
                lines.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), img)
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: 2\nnames: [rect, circle]\n")
    return yaml_path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Path to the data yaml of a 24+8 image, 2-class, 64 px dataset."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def teacher_weights(tiny_data, tmp_path_factory) -> Path:
    """A yolov5s teacher trained for one epoch on the tiny dataset with `yolodistill train` (no distillation)."""
    from yolodistill.cli import main

    project = tmp_path_factory.mktemp("teacher_runs")
    rc = main(["train", "--cfg", "yolov5s.yaml", "--data", str(tiny_data), "--imgsz", str(IMGSZ), "--epochs", "1",
               "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(project), "--name", "t",
               "--noplots", "--noautoanchor"])
    assert rc == 0
    return project / "t" / "weights" / "best.pt"


def interrupt_at_epoch(monkeypatch, epoch: int = 1):
    """Detection runs raise KeyboardInterrupt (Ctrl-C, exit code 130) as `epoch` starts, after the earlier epochs'
    checkpoints; returns the real train_epoch, to put back with monkeypatch.setattr before a --resume."""
    from yolodistill.detection import trainer as trainer_mod

    real = trainer_mod.DistillTrainer.train_epoch

    def interrupted(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e)

    monkeypatch.setattr(trainer_mod.DistillTrainer, "train_epoch", interrupted)
    return real


def yolov5n_with_data_statistics(data_yaml: Path, seed: int = 0):
    """A freshly initialised 2-class yolov5n (eval mode) whose BatchNorm statistics are averaged over every image of
    the tiny dataset, 8 at a time. A fresh network's activations shrink layer by layer until every box sits at the
    Detect biases (equal confidences everywhere, ties for NMS); with the data's statistics the boxes follow the
    image. Averaged over all 32 images, not one batch of 8: with one batch some channels' variance came from a
    handful of values, and PyTorch's own float32 error on a box centre reached 544 ulps of the largest (38 now)."""
    import cv2
    import torch

    from yolodistill import yolo_backend as yb

    images = sorted((Path(data_yaml).parent / "images").glob("*/*.png"))
    batch = torch.cat([yb.prepare_image(cv2.imread(str(f)), (IMGSZ, IMGSZ), stride=32, auto=False, device="cpu")
                       for f in images])
    torch.manual_seed(seed)
    model = yb.build_model("yolov5n.yaml", 2)
    model.names = {0: "rect", 1: "circle"}
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # running statistics := the average over the batches below
    with torch.no_grad():
        model.train()
        for chunk in batch.split(8):
            model(chunk)
    return model.eval()


# ---- classification (tests/test_classify_*.py) ------------------------------------------------------------------
from contextlib import contextmanager  # noqa: E402  (this section is appended to the detection fixtures above)

CLASSIFY_IMGSZ = 24
SHAPES = ("circle", "square", "triangle")


@contextmanager
def one_torch_thread():
    """torch on one thread inside: tiny models gain nothing from more, and lose 100x to a busy machine's other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def draw_shape(shape: str, rng: np.random.Generator, size: int = CLASSIFY_IMGSZ) -> np.ndarray:
    """A BGR image (size, size, 3): one filled shape of a random bright colour on dark noise."""
    import cv2

    img = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
    color = tuple(int(c) for c in rng.integers(120, 256, 3))
    r = int(rng.integers(size // 4, size // 2 - 1))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)], color)
    return img


def make_shapes_dataset(root: Path, n_train: int = 8, n_val: int = 3, n_unlabeled: int = 6, seed: int = 0) -> Path:
    """root/{train,val}/<shape>/<i>.png (3 classes) and root/unlabeled/<i>.png: an ImageFolder of coloured shapes."""
    import cv2

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for shape in SHAPES:
            (root / split / shape).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                cv2.imwrite(str(root / split / shape / f"{i:03d}.png"), draw_shape(shape, rng))
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    for i in range(n_unlabeled):
        cv2.imwrite(str(root / "unlabeled" / f"{i:03d}.png"), draw_shape(SHAPES[i % 3], rng))
    return root


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """Root of a 3-class, 24 px shapes dataset: train/ (8 per class), val/ (3 per class), unlabeled/ (6)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def shape_teachers(shapes_data, tmp_path_factory) -> tuple[Path, Path]:
    """Two classifier checkpoints trained on shapes_data: a `cnn` (2 epochs) and a `cnn_small` (1 epoch, seed 1)."""
    from yolodistill.classification.trainer import ClassifyOptions, ClassifyTrainer

    project = tmp_path_factory.mktemp("shape_teachers")
    paths = []
    for name, model, epochs, seed in (("cnn", "cnn", 2, 0), ("cnn_small", "cnn_small", 1, 1)):
        opts = ClassifyOptions(data=str(shapes_data), model=model, imgsz=CLASSIFY_IMGSZ, epochs=epochs, batch_size=8,
                               workers=0, device="cpu", project=str(project), name=name, seed=seed, lr0=3e-3)
        with one_torch_thread():
            paths.append(Path(ClassifyTrainer(opts).run()["best"]))
    return paths[0], paths[1]


# ---- comparing two trainings that must agree (DDP vs one process, store vs live teacher, resumed vs not) --------
# Float32 sums of n terms taken in another order differ by up to gamma_n = n * 2**-24 of the sum of the terms'
# magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 4.2), and which order a torch
# build takes depends on its kernels, thread count and batch shapes. So two runs that compute the same training
# agree on their weights only to rounding that the optimizer carries forward. With SGD a weight's update is lr
# x its gradient, so the two updates differ by lr x (the gradient's rounding): relative to the largest update of
# the tensor, gamma_n times how much the per-image gradients cancel. UPDATE_RTOL allows a cancellation of ~700x
# for a batch of 24 (measured: 1e-5 to 5e-5 of the update, torch 2.14.1). A real difference (a rank that skipped
# the all-reduce, optimizer or RNG state that did not come back on resume) changes the update by its own order.
# (AdamW cannot be compared this way: it divides by sqrt(v), so a weight whose gradient is within rounding of
# zero can take a full step either way; tests that compare weights train with SGD.)
UPDATE_RTOL = 1e-3


def assert_same_training(trained: dict, reference: dict, initial: dict, rtol: float = UPDATE_RTOL) -> None:
    """Two state dicts trained from `initial` differ by at most rtol x the largest update of each tensor."""
    import torch

    assert trained.keys() == reference.keys()
    for k, ref in reference.items():
        if not ref.is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            assert torch.equal(trained[k], ref), k
            continue
        update = (ref - initial[k]).abs().max().item()
        gap = (trained[k] - ref).abs().max().item()
        assert gap <= rtol * update, (k, gap, update)


def initial_weights(trainer) -> dict:
    """A copy of the set-up trainer's initial student weights (call before run())."""
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)  # in case torch was imported before OMP_NUM_THREADS was set
