"""End to end on a tiny generated dataset: teacher -> distil (output, feature) -> interrupt -> resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolodistill import yolo_backend as yb
from yolodistill.cli import main
from yolodistill.run_logger import read_results

from .conftest import IMGSZ

pytestmark = pytest.mark.slow

COMMON = ["--imgsz", str(IMGSZ), "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noplots"]


def _train(project: Path, name: str, *extra: str) -> Path:
    rc = main(["train", *COMMON, "--project", str(project), "--name", name, *extra])
    assert rc == 0
    return project / name


def _assert_plain_student(path: Path) -> None:
    """best/last.pt hold the keys yolov5 writes, a plain DetectionModel, no adapters and no hooks."""
    ckpt = yb.load_yolov5_checkpoint(path)
    assert {"epoch", "best_fitness", "model", "ema", "updates", "optimizer", "opt", "date"} <= set(ckpt)
    assert "distill" not in ckpt and ckpt["optimizer"] is None
    model = ckpt["model"]
    assert type(model).__name__ == "DetectionModel"
    assert not any("adapter" in k for k in model.state_dict())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_distil_output_and_feature_then_resume(teacher_weights, tiny_data, tmp_path, monkeypatch):
    # Output distillation only, through the Python API so the trainer can be inspected afterwards.
    from yolodistill.detection.trainer import DistillTrainer, TrainOptions

    trainer = DistillTrainer(TrainOptions(cfg="yolov5n.yaml", data=str(tiny_data), epochs=1, imgsz=IMGSZ,
                                          batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="out",
                                          t_weights=str(teacher_weights), d_output=True, noplots=True))
    out_dir = Path(trainer.run()["save_dir"])
    assert all(len(m._forward_hooks) == 0 for m in trainer.student.modules())
    assert all(len(m._forward_hooks) == 0 for m in trainer.teacher.modules())
    assert list(out_dir.glob("events.out.tfevents.*"))  # TensorBoard
    rows = read_results(out_dir / "results.csv")
    assert len(rows) == 1 and rows[0]["train/distill/output"] > 0
    assert "train/distill/feature" not in rows[0]
    _assert_plain_student(out_dir / "weights" / "best.pt")

    # Feature + output distillation with CWD, interrupted after the first epoch's checkpoint.
    from yolodistill.detection import trainer as trainer_mod

    calls = {"n": 0}
    real_train_epoch = trainer_mod.DistillTrainer.train_epoch

    def interrupt_second_epoch(self, epoch):
        calls["n"] += 1
        if epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(self, epoch)

    monkeypatch.setattr(trainer_mod.DistillTrainer, "train_epoch", interrupt_second_epoch)
    rc = main(["train", *COMMON, "--project", str(tmp_path), "--name", "feat", "--cfg", "yolov5n.yaml",
               "--data", str(tiny_data), "--epochs", "2", "--t-weights", str(teacher_weights), "--d-feature",
               "--feature-loss", "cwd", "--d_layers", "17:17", "20:20", "23:23"])
    assert rc == 130  # Ctrl-C exit code
    feat_dir = tmp_path / "feat"
    last = feat_dir / "weights" / "last.pt"
    ckpt = yb.load_yolov5_checkpoint(last)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None
    adapters = ckpt["distill"]["adapters"]
    assert any(k.endswith("weight") for k in adapters)  # yolov5n -> yolov5s channels differ: 1x1 convs
    assert not any("adapter" in k for k in ckpt["model"].state_dict())
    monkeypatch.setattr(trainer_mod.DistillTrainer, "train_epoch", real_train_epoch)

    # Resume restores adapters, EMA, optimizer and epoch, then finishes epoch 1.
    restored = {}
    real_restore = trainer_mod.DistillTrainer._restore

    def spy_restore(self, ck):
        real_restore(self, ck)
        restored["adapters"] = {k: v.clone() for k, v in self.distiller.adapters.state_dict().items()}
        restored["start_epoch"] = self.start_epoch

    monkeypatch.setattr(trainer_mod.DistillTrainer, "_restore", spy_restore)
    assert main(["train", "--resume", str(last)]) == 0
    assert restored["start_epoch"] == 1
    for k, v in adapters.items():
        assert torch.equal(restored["adapters"][k], v)
    rows = read_results(feat_dir / "results.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    # yolov5's 14 columns first, in its order (its plot_results reads them by position), then ours
    header = [c.strip() for c in (feat_dir / "results.csv").read_text().splitlines()[0].split(",")]
    assert header == ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                      "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                      "val/cls_loss", "x/lr0", "x/lr1", "x/lr2", "train/distill/output", "train/distill/feature"]
    assert all(r["train/distill/feature"] > 0 and r["train/distill/output"] > 0 for r in rows)
    for name in ("best.pt", "last.pt"):
        _assert_plain_student(feat_dir / "weights" / name)


def test_student_loads_with_yolov5_attempt_load(teacher_weights, monkeypatch):
    """yolov5's own loader takes our checkpoints (it needs full-pickle torch.load on torch >= 2.6)."""
    from functools import partial

    from yolov5.models.experimental import attempt_load

    monkeypatch.setattr(torch, "load", partial(torch.load, weights_only=False))
    model = attempt_load(str(teacher_weights), device="cpu")
    out = model(torch.zeros(1, 3, IMGSZ, IMGSZ))
    assert out[0].shape[-1] == 5 + 2


def test_val_and_detect_commands(teacher_weights, tiny_data, tmp_path):
    assert main(["val", "--weights", str(teacher_weights), "--data", str(tiny_data), "--imgsz", str(IMGSZ),
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
                 "--name", "v"]) == 0
    images = tiny_data.parent / "images" / "val"
    assert main(["detect", "--weights", str(teacher_weights), "--source", str(images), "--imgsz", str(IMGSZ),
                 "--device", "cpu", "--conf-thres", "0.0", "--save-txt", "--project", str(tmp_path),
                 "--name", "d"]) == 0
    saved = sorted((tmp_path / "d").glob("*.png"))
    assert len(saved) == len(list(images.glob("*.png")))
    labels = sorted((tmp_path / "d" / "labels").glob("*.txt"))
    assert len(labels) == len(saved)
    # yolov5's label files: class x y w h, reusable as labels; the confidence only with --save-conf
    rows = [line.split() for f in labels for line in f.read_text().splitlines()]
    assert rows and all(len(r) == 5 for r in rows)
    assert main(["detect", "--weights", str(teacher_weights), "--source", str(images), "--imgsz", str(IMGSZ),
                 "--device", "cpu", "--conf-thres", "0.0", "--save-txt", "--save-conf", "--nosave",
                 "--project", str(tmp_path), "--name", "c"]) == 0
    rows = [line.split() for f in (tmp_path / "c" / "labels").glob("*.txt") for line in f.read_text().splitlines()]
    assert rows and all(len(r) == 6 for r in rows)


def test_train_py_options_run(tiny_data, tmp_path):
    """The less common train.py options go through yolov5's own code paths without error."""
    from yolodistill.detection.trainer import DistillTrainer, TrainOptions

    trainer = DistillTrainer(TrainOptions(
        cfg="yolov5n.yaml", data=str(tiny_data), epochs=2, imgsz=IMGSZ, batch_size=8, workers=0, device="cpu",
        project=str(tmp_path), name="opts", noplots=True, image_weights=True, multi_scale=True, cos_lr=True,
        freeze=[3], label_smoothing=0.1, save_period=1, optimizer="AdamW", noval=True, noautoanchor=True, nbs=16))
    trainer.setup()
    assert trainer.accumulate == 2  # --nbs 16 at batch 8: an optimizer step every 2 batches (yolov5: 64 -> 8)
    run = Path(trainer.run()["save_dir"])
    rows = read_results(run / "results.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["metrics/mAP_0.5"] == 0  # --noval: only the final epoch is validated
    assert (run / "weights" / "epoch0.pt").is_file()
    frozen = {k.split(".")[1] for k, p in trainer.student.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2"}  # --freeze 3: the first three layers
