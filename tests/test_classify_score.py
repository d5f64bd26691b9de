"""Scoring a saved classifier on a split that did not choose it (trainer.score_checkpoint), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from yolodistill.classification.data import split_folders
from yolodistill.classification.models import build_classifier, save_classifier
from yolodistill.classification.trainer import score_checkpoint
from yolodistill.errors import UserError

CLASSES = ("circle", "square", "triangle")


def _images(root, split: str, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for cls, n in per_class.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


@pytest.fixture
def always_circle(tmp_path):
    """A checkpoint whose logits are (2, 0, 0) for every image: it always says circle."""
    model = build_classifier("mlp_small", 3, imgsz=8)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    path = tmp_path / "best.pt"
    save_classifier(path, model, arch="mlp_small", classes=CLASSES, imgsz=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    return path


def test_a_checkpoint_is_scored_on_the_split_asked_for(always_circle, tmp_path):
    data = tmp_path / "data"
    _images(data, "train", {c: 1 for c in CLASSES})
    _images(data, "val", {"square": 1, "triangle": 1})
    _images(data, "test", {"circle": 2, "square": 1, "triangle": 1})
    assert split_folders(data) == (data / "train", data / "val")  # training chooses on val/, never on test/
    test = score_checkpoint(always_circle, data, split="test")
    # right on the 2 circles of 4; top-5 is top-3 of 3 classes: always right; cross-entropy of logits (2, 0, 0):
    # -log(e^2 / (e^2 + 2)) for a circle, -log(1 / (e^2 + 2)) otherwise: mean log(e^2 + 2) - 1
    assert test["metrics/accuracy_top1"] == 0.5 and test["metrics/accuracy_top5"] == 1.0
    # float32 log-softmax of 3 logits and a sum of 4 terms: a few ulps (1.2e-7 each) on any kernel; 1e-5 is ~80
    assert test["val/loss"] == pytest.approx(math.log(math.e ** 2 + 2) - 1, rel=1e-5)
    assert score_checkpoint(always_circle, data, split="val")["metrics/accuracy_top1"] == 0.0


def test_scoring_a_missing_split_is_a_user_error(always_circle, tmp_path):
    _images(tmp_path / "data", "val", {c: 1 for c in CLASSES})
    with pytest.raises(UserError, match="does not exist"):
        score_checkpoint(always_circle, tmp_path / "data", split="test")


def test_a_clip_distilled_student_is_scored_through_its_head(tmp_path):
    # embedding (1, 0, 0, 0) for every image; the head's third row, triangle, is that direction
    model = build_classifier("mlp_small", 4, imgsz=8)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    head = {"weight": torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]), "bias": torch.zeros(3),
            "scale": 1.0, "classes": list(CLASSES)}
    path = tmp_path / "best.pt"
    save_classifier(path, model, arch="mlp_small", classes=CLASSES, num_classes=4, imgsz=8, mean=(0.5,) * 3,
                    std=(0.25,) * 3, head=head)
    _images(tmp_path / "data", "test", {"circle": 2, "square": 1, "triangle": 1})
    assert score_checkpoint(path, tmp_path / "data")["metrics/accuracy_top1"] == 0.25  # the one triangle of 4
