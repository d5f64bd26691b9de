"""Shared fixtures: a tiny generated YOLO dataset and a tiny trained teacher, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLOv5_VERBOSE", "False")  # yolov5 reads this at import to quiet its logger
os.environ.setdefault("MPLBACKEND", "Agg")

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
