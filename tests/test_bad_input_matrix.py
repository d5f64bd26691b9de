"""The issue's bad-input matrix, one test per cell, for detection (`train`) and classification (`classify`).

Every cell has one documented outcome (docs/scale-out-and-faults.md, "Errors"): the input is skipped with a count
and a warning and training runs on the rest (rc 0, a best.pt), or the run stops with exactly one stderr line
`yolodistill <cmd>: error: ...` before training starts (rc 1, no traceback). Never a hang, never silent
training on wrong data.

Where a cell means nothing for classification (its labels are folder names, not label files), the test
of the analogous case says so in its docstring.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from yolodistill.cli import main

from .conftest import CLASSIFY_IMGSZ, IMGSZ, SHAPES, make_shapes_dataset, make_tiny_dataset, one_torch_thread

DETECT = ["--imgsz", str(IMGSZ), "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu",
          "--noplots", "--noautoanchor"]
CLASSIFY = ["--model", "cnn_small", "--imgsz", str(CLASSIFY_IMGSZ), "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--device", "cpu"]
N_TRAIN = 16  # detection copies: 16 train + 4 val images, two batches of 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


# ---------------------------------------------------------------------------------------------- helpers

def one_line_error(capsys, argv: list, *fragments: str) -> str:
    """Run the CLI, expect rc 1 and exactly one `yolodistill <cmd>: error: ...` line, the last on stderr, with every
    fragment in it and no traceback; return that line. (A data scan before the error may draw progress bars.)"""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    prefix = f"yolodistill {argv[0]}: error: "
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 1, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith(prefix), err
    assert err.strip().splitlines()[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "yolodistill" and r.levelno >= logging.WARNING]


class ShellPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class PathTouchPayload(ShellPayload):
    def __reduce__(self):
        return Path.touch, (self.marker,)  # pickled as builtins.getattr(pathlib.Path, 'touch')


def malicious_checkpoint(tmp_path: Path, payload: type) -> tuple[Path, Path]:
    """(checkpoint, marker): a zip-format checkpoint whose unpickling would create `marker`."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": payload(marker), "epoch": -1}, path)
    return path, marker


def assert_payload_is_live(path: Path, marker: Path) -> None:
    """The refusal proved something: a full pickle load of the same file does create the marker."""
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def corrupt_image(path: Path, how: str) -> None:
    if how == "garbage":  # an "image" that is not one
        path.write_bytes(b"this is a text file with a .png name\n" * 8)
    elif how == "truncated":
        truncated_copy(path, path)
    else:
        assert how == "zero-byte"
        path.write_bytes(b"")


# ---------------------------------------------------------------------------------------------- detection

@pytest.fixture
def det_data(tmp_path) -> Path:
    """A private 16 + 4 image copy of the tiny detection dataset (the defect goes into train image 0003)."""
    return make_tiny_dataset(tmp_path / "data", n_train=N_TRAIN, n_val=4)


def det_train(tmp_path: Path, *extra) -> list:
    return ["train", *DETECT, "--project", tmp_path / "runs", "--name", "x", *extra]


def assert_trained(tmp_path: Path) -> None:
    assert (tmp_path / "runs" / "x" / "weights" / "best.pt").is_file()


def assert_not_started(tmp_path: Path) -> None:
    assert not (tmp_path / "runs" / "x" / "weights" / "last.pt").exists()


def det_skips_one(tmp_path, caplog, data: Path, image: Path, reason: str) -> None:
    """`train` on `data` runs to a best.pt and warns once: 1 of N_TRAIN skipped, naming `image` and `reason`."""
    caplog.set_level(logging.WARNING, logger="yolodistill")
    assert main([str(a) for a in det_train(tmp_path, "--cfg", "yolov5n.yaml", "--data", data)]) == 0
    skipped = [m for m in warnings_of(caplog) if "skipped" in m]
    assert len(skipped) == 1, warnings_of(caplog)
    assert skipped[0].startswith(f"train: WARNING: skipped 1 of {N_TRAIN} images with a corrupt image or label file")
    assert f"{image}: {reason}" in skipped[0] and f"using the other {N_TRAIN - 1}" in skipped[0]
    assert_trained(tmp_path)


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_det_corrupted_image_skipped(tmp_path, caplog, det_data, how):
    image = det_data.parent / "images" / "train" / "0003.png"
    corrupt_image(image, how)
    det_skips_one(tmp_path, caplog, det_data, image, "not a readable image")


def test_det_zero_byte_image_skipped(tmp_path, caplog, det_data):
    image = det_data.parent / "images" / "train" / "0003.png"
    corrupt_image(image, "zero-byte")
    det_skips_one(tmp_path, caplog, det_data, image, "not a readable image")


def test_det_empty_label_file_is_a_counted_background(tmp_path, caplog, det_data):
    """yolov5's meaning of an empty label file: an image with no objects. It trains, and the count is logged."""
    (det_data.parent / "labels" / "train" / "0003.txt").write_text("")
    caplog.set_level(logging.WARNING, logger="yolodistill")
    assert main([str(a) for a in det_train(tmp_path, "--cfg", "yolov5n.yaml", "--data", det_data)]) == 0
    assert warnings_of(caplog) == [f"train: WARNING: 1 of {N_TRAIN} images have no labels (empty or missing label "
                                   f"file) and count as background images with no objects"]
    assert_trained(tmp_path)


def test_det_label_line_with_four_numbers_skipped(tmp_path, caplog, det_data):
    """The whole image is skipped, its good label lines too (yolov5's rule); the warning names the bad line."""
    label = det_data.parent / "labels" / "train" / "0003.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    det_skips_one(tmp_path, caplog, det_data, det_data.parent / "images" / "train" / "0003.png",
                  f"{label} line 2 has 4 numbers, a box label needs 5 (class x_center y_center width height)")


@pytest.mark.parametrize("line, reason", [("0 1.5 0.5 0.2 0.2", "non-normalized or out of bounds coordinates [1.5]"),
                                          ("0 0.5 -0.1 0.2 0.2", "negative label values [-0.1]")])
def test_det_coordinates_outside_unit_range_skipped(tmp_path, caplog, det_data, line, reason):
    (det_data.parent / "labels" / "train" / "0003.txt").write_text(line + "\n")
    det_skips_one(tmp_path, caplog, det_data, det_data.parent / "images" / "train" / "0003.png", reason)


@pytest.mark.parametrize("flag", ["--weights", "--t_weights"])
def test_det_truncated_checkpoint(capsys, tmp_path, tiny_data, teacher_weights, flag):
    half = truncated_copy(teacher_weights, tmp_path / "half.pt")
    extra = ["--weights", half] if flag == "--weights" else ["--cfg", "yolov5n.yaml", "--t_weights", half,
                                                              "--d_output"]
    one_line_error(capsys, det_train(tmp_path, "--data", tiny_data, *extra),
                   f"{half} is not a readable PyTorch checkpoint (truncated or corrupt?)")
    assert_not_started(tmp_path)


@pytest.mark.parametrize("payload", [ShellPayload, PathTouchPayload])
@pytest.mark.parametrize("flag", ["--weights", "--t_weights"])
def test_det_malicious_checkpoint_refused_and_never_run(capsys, tmp_path, tiny_data, flag, payload):
    evil, marker = malicious_checkpoint(tmp_path, payload)
    extra = ["--weights", evil] if flag == "--weights" else ["--cfg", "yolov5n.yaml", "--t_weights", evil,
                                                              "--d_output"]
    line = one_line_error(capsys, det_train(tmp_path, "--data", tiny_data, *extra), str(evil), "--trust-checkpoint")
    assert "which the weights-only loader does not allow" in line
    assert_not_started(tmp_path)
    assert_payload_is_live(evil, marker)


@pytest.mark.parametrize("key", ["train", "val", "names"])
def test_det_dataset_yaml_missing_key(capsys, tmp_path, tiny_data, key):
    data = tmp_path / "data.yaml"
    data.write_text(re.sub(rf"^{key}:.*\n", "", tiny_data.read_text(), flags=re.M))
    one_line_error(capsys, det_train(tmp_path, "--cfg", "yolov5n.yaml", "--data", data),
                   f"dataset yaml {data} has no '{key}' entry")
    assert_not_started(tmp_path)


def test_det_unknown_feature_loss(capsys, tmp_path, tiny_data, teacher_weights):
    """Refused with the distillation config, before any data or model is loaded (no run folder is made)."""
    one_line_error(capsys, det_train(tmp_path, "--cfg", "yolov5n.yaml", "--data", tiny_data, "--t_weights",
                                     teacher_weights, "--d_feature", "--feature-loss", "nope"),
                   "unknown feature loss 'nope'; available: ", "mse")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("pair", ["24:24", "17:24"])
def test_det_layer_pair_that_cannot_be_adapted(capsys, tmp_path, tiny_data, teacher_weights, pair):
    """The Detect head (model.24) returns per-level tensors (and, in eval mode, the decoded boxes with them): no
    feature map for an adapter. Found by the shape probe, before the first batch."""
    one_line_error(capsys, det_train(tmp_path, "--cfg", "yolov5n.yaml", "--data", tiny_data, "--t_weights",
                                     teacher_weights, "--d_feature", "--d_layers", pair),
                   "layer 'model.24' (Detect) outputs a tuple, not a tensor: pick a feature layer")
    assert_not_started(tmp_path)


# ---------------------------------------------------------------------------------------------- classification

@pytest.fixture
def cls_data(tmp_path) -> Path:
    """A private copy of the shapes dataset: train/ (8 per class), val/ (3 per class)."""
    return make_shapes_dataset(tmp_path / "data", n_unlabeled=0)


def cls_train(tmp_path: Path, data: Path, *extra) -> list:
    return ["classify", "train", "--data", data, *CLASSIFY, "--project", tmp_path / "runs", "--name", "x", *extra]


def cls_distill(tmp_path: Path, data: Path, *extra) -> list:
    return ["classify", "distill", "--data", data, *CLASSIFY, "--project", tmp_path / "runs", "--name", "x", *extra]


def classify_error(capsys, argv: list, *fragments: str) -> str:
    """`classify ...` errors print 'yolodistill classify: error: ...', alone on stderr (no data scan bar)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("yolodistill classify: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def cls_skips_one(tmp_path, caplog, data: Path, image: Path) -> None:
    caplog.set_level(logging.INFO, logger="yolodistill")
    assert main([str(a) for a in cls_train(tmp_path, data)]) == 0
    n = 3 * 8
    assert warnings_of(caplog) == [f"labeled folder: skipped 1 unreadable or truncated image(s) of {n} "
                                   f"(first: {image})"]
    assert f"train {n - 1} images, val 9" in caplog.text
    assert (tmp_path / "runs" / "x" / "weights" / "best.pt").is_file()


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_cls_corrupted_image_skipped(tmp_path, caplog, cls_data, how):
    image = cls_data / "train" / "square" / "003.png"
    corrupt_image(image, how)
    cls_skips_one(tmp_path, caplog, cls_data, image)


def test_cls_zero_byte_image_skipped(tmp_path, caplog, cls_data):
    image = cls_data / "train" / "square" / "003.png"
    corrupt_image(image, "zero-byte")
    cls_skips_one(tmp_path, caplog, cls_data, image)


def test_cls_empty_class_folder_skipped(tmp_path, caplog, cls_data):
    """Analog of an empty label file (classification labels are folder names): a class folder with no image.
    It is not a class: skipped with a warning, and the model has the other three."""
    (cls_data / "train" / "hexagon").mkdir()
    caplog.set_level(logging.INFO, logger="yolodistill")
    assert main([str(a) for a in cls_train(tmp_path, cls_data)]) == 0
    assert warnings_of(caplog) == [f"{cls_data / 'train'}: skipped 1 class folder(s) without readable images "
                                   f"(hexagon); 3 classes: circle, square, triangle"]
    best = tmp_path / "runs" / "x" / "weights" / "best.pt"
    assert torch.load(best, map_location="cpu", weights_only=True)["classes"] == list(SHAPES)


def test_cls_image_outside_any_class_folder(capsys, tmp_path, cls_data):
    """Analog of a malformed label line: an image in train/ itself, whose label (its folder) is missing."""
    shutil.copy(cls_data / "train" / "square" / "000.png", cls_data / "train" / "loose.png")
    classify_error(capsys, cls_train(tmp_path, cls_data),
                   f"{cls_data / 'train'} holds images directly (loose.png); labeled data needs the ImageFolder "
                   f"layout")


def test_cls_val_class_unknown_to_training(capsys, tmp_path, cls_data):
    """Analog of coordinates outside [0, 1]: a label outside the valid range, here a val class folder (hexagon)
    that train/ has no images of (its folder is empty), so no output of the model means it."""
    (cls_data / "train" / "hexagon").mkdir()
    (cls_data / "val" / "hexagon").mkdir()
    shutil.copy(cls_data / "val" / "square" / "000.png", cls_data / "val" / "hexagon" / "000.png")
    classify_error(capsys, cls_train(tmp_path, cls_data),
                   f"{cls_data / 'val'} has class folder(s) hexagon that the training data has no images of")


@pytest.mark.parametrize("flag", ["--teacher", "--weights"])
def test_cls_truncated_checkpoint(capsys, tmp_path, shapes_data, shape_teachers, flag):
    half = truncated_copy(shape_teachers[1], tmp_path / "half.pt")
    extra = ["--teacher", half] if flag == "--teacher" else ["--teacher", shape_teachers[1], "--weights", half]
    classify_error(capsys, cls_distill(tmp_path, shapes_data, *extra), f"{half} is not a readable")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("payload", [ShellPayload, PathTouchPayload])
@pytest.mark.parametrize("flag", ["--teacher", "--weights"])
def test_cls_malicious_checkpoint_refused_and_never_run(capsys, tmp_path, shapes_data, shape_teachers, flag,
                                                         payload):
    """Classifier checkpoints are plain tensors, always loaded weights-only (classify has no --trust-checkpoint)."""
    evil, marker = malicious_checkpoint(tmp_path, payload)
    extra = ["--teacher", evil] if flag == "--teacher" else ["--teacher", shape_teachers[1], "--weights", evil]
    line = classify_error(capsys, cls_distill(tmp_path, shapes_data, *extra), str(evil))
    assert re.search(r"weights[- ]only", line, re.I), line
    assert not (tmp_path / "runs").exists()
    assert_payload_is_live(evil, marker)


def test_cls_dataset_without_val_split(capsys, tmp_path, cls_data):
    """Analog of a dataset yaml with a missing key (classification data is a folder): no val/ (or test/)."""
    shutil.rmtree(cls_data / "val")
    classify_error(capsys, cls_train(tmp_path, cls_data),
                   f"{cls_data} needs train/ and val/ (or test/) subfolders")


def test_cls_unknown_feature_loss(capsys, tmp_path, shapes_data, shape_teachers):
    classify_error(capsys, cls_distill(tmp_path, shapes_data, "--teacher", shape_teachers[1], "--feature-layers",
                                       "auto", "--feature-loss", "nope"),
                   "unknown feature loss 'nope'; available: ", "mse")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("pair, side, layer, shape", [("head:head", "student", "head", "[1, 3]"),
                                                      ("stages.1:pool", "teacher", "pool", "[1, 16]")])
def test_cls_layer_pair_that_cannot_be_adapted(capsys, tmp_path, shapes_data, shape_teachers, pair, side, layer,
                                               shape):
    """The head and the pooled vector are (B, C): no feature map for a 1x1 adapter."""
    classify_error(capsys, cls_distill(tmp_path, shapes_data, "--teacher", shape_teachers[1], "--feature-layers",
                                       pair),
                   f"{side} layer '{layer}' outputs shape {shape}, not (B, C, H, W)")
    assert not (tmp_path / "runs").exists()
