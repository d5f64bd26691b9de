"""Every user mistake named in the detection issue ends with one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import torch

from yolodistill import yolo_backend as yb
from yolodistill.checkpoint import save_checkpoint_atomic
from yolodistill.cli import main

from .conftest import IMGSZ, make_tiny_dataset

BASE = ["--imgsz", str(IMGSZ), "--batch-size", "8", "--workers", "0", "--device", "cpu", "--epochs", "1",
        "--noplots"]


def _fails(capsys, argv, match: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    last = err.splitlines()[-1]
    assert "Traceback" not in err
    assert match in last, last
    return last


def _train(tmp_path, *extra):
    return ["train", *BASE, "--project", str(tmp_path), "--name", "x", *extra]


def test_missing_teacher_weights(capsys, tiny_data, tmp_path):
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(tmp_path / "nope.pt"), "--d_output"), "nope.pt")


def test_distillation_without_teacher(capsys, tiny_data, tmp_path):
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--d_feature"), "--t_weights")


def test_nominal_batch_below_one(capsys, tiny_data, tmp_path):
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--nbs", "0"),
           "--nbs must be at least 1, got 0")


def test_not_a_yolov5_checkpoint(capsys, tiny_data, tmp_path):
    bogus = tmp_path / "bogus.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, bogus)
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights", str(bogus),
                          "--d_output"), "not a YOLOv5 detection checkpoint")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    _fails(capsys, _train(tmp_path, "--weights", str(text), "--data", str(tiny_data)), "text.pt")


def test_classes_the_teacher_lacks_under_output_distillation(capsys, teacher_weights, tmp_path):
    three = make_tiny_dataset(tmp_path / "d3")
    three.write_text(three.read_text().replace("nc: 2\nnames: [rect, circle]", "nc: 3\nnames: [a, b, c]"))
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(three), "--t_weights",
                          str(teacher_weights), "--d_output"), "has no class named 'a', 'b', 'c' (2 classes: rect, "
                                                               "circle): give its class for each with --t_classes")


def test_anchor_mismatch_under_output_distillation(capsys, teacher_weights, tiny_data, tmp_path):
    student = yb.build_model("yolov5n.yaml", 2)
    yb.detect_head(student).anchors.mul_(2.0)
    weights = tmp_path / "student.pt"
    save_checkpoint_atomic({"model": student.half(), "ema": None, "epoch": -1, "optimizer": None}, weights)
    _fails(capsys, _train(tmp_path, "--weights", str(weights), "--data", str(tiny_data), "--t_weights",
                          str(teacher_weights), "--d_output"), "same anchors")


def test_unknown_layer(capsys, teacher_weights, tiny_data, tmp_path):
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(teacher_weights), "--d_feature", "--d_layers", "99:17"), "model.99")
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(teacher_weights), "--d_feature", "--d_layers", "model.17:model.nope"), "model.nope")


def test_unknown_feature_loss(capsys, teacher_weights, tiny_data, tmp_path):
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(teacher_weights), "--d_feature", "--feature-loss", "nope"), "nope")


def test_missing_dataset_yaml(capsys, tmp_path):
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tmp_path / "missing.yaml")),
           "missing.yaml")


def test_dataset_without_images(capsys, tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    data = tmp_path / "empty.yaml"
    data.write_text(f"path: {tmp_path / 'empty'}\ntrain: images\nval: images\nnames: [a]\n")
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(data)), "no images found")
    data.write_text(f"path: {tmp_path / 'empty'}\ntrain: images\nnames: [a]\n")
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(data)), "no 'val' entry")


def test_label_class_out_of_range(capsys, tmp_path):
    data = make_tiny_dataset(tmp_path / "bad", n_train=8, n_val=4)
    label = next((tmp_path / "bad" / "labels" / "train").glob("*.txt"))
    label.write_text("5 0.5 0.5 0.2 0.2\n")
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(data)), "exceeds nc=2")


def test_nan_loss_skips_then_stops(capsys, caplog, teacher_weights, tiny_data, tmp_path, monkeypatch):
    import logging

    from yolodistill.detection import trainer as trainer_mod

    caplog.set_level(logging.WARNING, logger="yolodistill")
    real = trainer_mod.DistillTrainer.total_loss

    def nan_loss(self, *args):
        total, items = real(self, *args)
        return total * float("nan"), items

    monkeypatch.setattr(trainer_mod.DistillTrainer, "total_loss", nan_loss)
    monkeypatch.setattr(trainer_mod, "MAX_BAD_STEPS", 2)
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(teacher_weights), "--d_output"), "NaN")
    assert sum("step skipped" in r.getMessage() for r in caplog.records) == 2


def test_non_finite_gradient_of_a_finite_loss_skips_the_step(caplog, teacher_weights, tiny_data, tmp_path,
                                                             monkeypatch):
    # one step whose loss is finite and whose gradient is NaN (as torchvision's CIoU gives for a box of zero
    # height): stepping with it would write NaN into every weight; skipped, the run trains on and ends finite
    import logging

    from yolodistill.detection import trainer as trainer_mod

    caplog.set_level(logging.WARNING, logger="yolodistill")
    real = trainer_mod.DistillTrainer.total_loss
    calls = []

    def nan_gradient_once(self, *args):
        total, items = real(self, *args)
        calls.append(1)
        if len(calls) == 1:
            p = next(self.student.parameters())
            # value 0 * sqrt(0) = 0; gradient 0 * 1 / (2 sqrt(0)) = NaN, into p
            total = total + 0 * torch.sqrt((p - p.detach()).sum())
        return total, items

    monkeypatch.setattr(trainer_mod.DistillTrainer, "total_loss", nan_gradient_once)
    assert main(_train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                       str(teacher_weights), "--d_output", "--nbs", "8", "--epochs", "2", "--noval")) == 0
    assert sum("non-finite gradients" in r.getMessage() for r in caplog.records) == 1
    assert len(calls) > 1  # it trained on after the skipped step
    model = torch.load(tmp_path / "x" / "weights" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in model.float().state_dict().values())


def test_nan_weights_are_never_saved_over_the_last_good_checkpoint(capsys, tiny_data, tmp_path, monkeypatch):
    from yolodistill.detection import trainer as trainer_mod

    real = trainer_mod.DistillTrainer.end_epoch

    def corrupt_after_epoch_1(self, epoch):
        real(self, epoch)
        if epoch == 1:
            with torch.no_grad():
                next(self.student.parameters()).fill_(float("nan"))

    monkeypatch.setattr(trainer_mod.DistillTrainer, "end_epoch", corrupt_after_epoch_1)
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--epochs", "2", "--noval"),
           "NaN/inf in epoch 1 and were not saved")
    last = torch.load(tmp_path / "x" / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].float().state_dict().values())


def test_imgsz_rounded_to_stride(tiny_data, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="yolodistill")
    assert main(["train", "--imgsz", "70", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--epochs", "1",
                 "--noval", "--noplots", "--project", str(tmp_path), "--name", "r", "--cfg", "yolov5n.yaml",
                 "--data", str(tiny_data)]) == 0
    assert any("not a multiple" in r.getMessage() and "96" in r.getMessage() for r in caplog.records)


def test_console_script_exit_code_and_one_line(tmp_path):
    """The installed command: a user error is one stderr line and exit code 1, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "yolodistill", "train", "--data", str(tmp_path / "none.yaml"),
                           "--cfg", "yolov5n.yaml", "--project", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("yolodistill train: error: dataset yaml not found")
