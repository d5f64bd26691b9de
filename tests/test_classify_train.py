"""End-to-end classifier training and distillation on generated shapes: what is logged, saved, hooked and frozen."""

from __future__ import annotations

import math

import pytest
import torch

from yolodistill.classification.embed import embed_classifiers
from yolodistill.classification.models import build_classifier, load_classifier
from yolodistill.classification.teachers import ClassifierTeachers
from yolodistill.classification.distill import KDTrainer
from yolodistill.classification.trainer import ClassifyOptions
from yolodistill.config import LayerPair
from yolodistill.errors import UserError
from yolodistill.run_logger import read_results

from .conftest import CLASSIFY_IMGSZ, SHAPES, assert_same_training, initial_weights, one_torch_thread

ACC = ["metrics/accuracy_top1", "metrics/accuracy_top5", "val/loss", "lr/0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def _options(data, project, name, **kw) -> ClassifyOptions:
    kw = {"model": "cnn_small", "imgsz": CLASSIFY_IMGSZ, "epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu",
          **kw}
    return ClassifyOptions(data=str(data), project=str(project), name=name, **kw)


def _columns(save_dir) -> list[str]:
    return [c.strip() for c in (save_dir / "results.csv").read_text().splitlines()[0].split(",")]


def _no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_teacher_training_writes_plain_checkpoints(shape_teachers):
    for path, arch in zip(shape_teachers, ("cnn", "cnn_small")):
        save_dir = path.parent.parent
        assert _columns(save_dir) == ["epoch", "train/ce", *ACC]
        assert (path.parent / "last.pt").is_file()
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert (ckpt["arch"], ckpt["classes"], ckpt["num_classes"], ckpt["imgsz"]) == (arch, list(SHAPES), 3, 24)
        assert set(ckpt["model"]) == set(build_classifier(arch, 3, imgsz=24).state_dict())


@pytest.mark.slow
def test_distill_with_feature_kd(shapes_data, shape_teachers, tmp_path):
    opts = _options(shapes_data, tmp_path, "kd", epochs=2, t_weights=[str(shape_teachers[0])], d_layers="auto")
    trainer = KDTrainer(opts).setup()
    # "auto": the deepest feature map of each, cnn_small's stages.1 (16 ch, /2) -> cnn's stages.2 (128 ch, /4)
    assert trainer.distiller.pairs == (LayerPair("stages.1", "stages.2"),)
    assert trainer.model.stages[1]._forward_hooks and trainer.teachers.members[0].stages[2]._forward_hooks
    teacher_before = {k: v.clone() for k, v in trainer.teachers.state_dict().items()}  # BN statistics included
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    adapters_before = [p.detach().clone() for p in trainer.distiller.adapters.parameters()]
    assert adapters_before  # 16 -> 128 channels: a 1x1 conv

    result = trainer.run()

    # gradients never reached the teacher, and it did not update its BatchNorm statistics either
    assert all(p.grad is None and not p.requires_grad for p in trainer.teachers.parameters())
    for k, v in trainer.teachers.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert not torch.equal(trainer.model.stages[0][0].weight, student_before["stages.0.0.weight"])
    # the feature term trained the adapter
    assert any(not torch.equal(p, q) for p, q in zip(trainer.distiller.adapters.parameters(), adapters_before))
    # hooks are gone from both models once training ends
    assert _no_hooks(trainer.model) and _no_hooks(trainer.teachers)
    assert not trainer.distiller.attached

    save_dir = tmp_path / "kd"
    assert result["save_dir"] == str(save_dir)
    assert _columns(save_dir) == ["epoch", "train/distill/kd", "train/ce", "train/distill/feature", *ACC]
    rows = read_results(save_dir / "results.csv")
    assert len(rows) == 2
    assert all(r["train/distill/feature"] > 0 and r["train/distill/kd"] >= 0 and math.isfinite(r["train/ce"])
               for r in rows)

    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(save_dir / "weights" / name, map_location="cpu", weights_only=True)
        assert set(ckpt["model"]) == set(build_classifier("cnn_small", 3, imgsz=24).state_dict())
        assert not any("adapter" in k or "->" in k for k in ckpt["model"])
        assert ckpt["distill"]["teachers"]["checkpoints"] == ["best.pt"]
        assert (ckpt["distill"]["temperature"], ckpt["distill"]["alpha"]) == (4.0, 0.9)
    # last.pt is the trained student, nothing more: it reproduces the trainer's model
    student, meta = load_classifier(save_dir / "weights" / "last.pt")
    assert meta["epoch"] == 1
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(student(x), trainer.model.eval()(x))


@pytest.mark.slow
def test_ensemble_with_unlabeled_live_equals_store(shapes_data, shape_teachers, tmp_path):
    """An ensemble of 2 with an unlabeled folder; without augmentation, a logits store gives the same run."""
    teachers = [str(p) for p in shape_teachers]
    unlabeled = [str(shapes_data / "unlabeled")]
    # SGD: the two runs see teacher logits computed in other batches, equal only to rounding (see conftest)
    live = KDTrainer(_options(shapes_data, tmp_path, "live", t_weights=teachers, unlabeled=unlabeled,
                              augment=False, optimizer="SGD")).setup()
    initial = initial_weights(live)
    assert len(live.train_set) == 3 * 8 + 6
    labels = [label for _, label, _ in live.train_set]
    assert labels.count(-1) == 6 and sorted(set(labels)) == [-1, 0, 1, 2]
    teacher_before = {k: v.clone() for k, v in live.teachers.state_dict().items()}
    live.run()
    assert all(torch.equal(v, teacher_before[k]) for k, v in live.teachers.state_dict().items())
    assert all(p.grad is None for p in live.teachers.parameters())
    assert _columns(tmp_path / "live") == ["epoch", "train/distill/kd", "train/ce", *ACC]
    ckpt = torch.load(tmp_path / "live" / "weights" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["distill"]["teachers"]["checkpoints"] == ["best.pt", "best.pt"]

    # the store is built over the dataset root, which holds train/ and unlabeled/
    store = embed_classifiers(shapes_data, tmp_path / "store", ClassifierTeachers(teachers), batch_size=16, workers=0)
    cached = KDTrainer(_options(shapes_data, tmp_path, "cached", teacher_store=str(store), unlabeled=unlabeled,
                                augment=False, optimizer="SGD")).setup()
    assert cached.teachers is None  # no teacher runs while training from a store
    cached.run()
    (row_live,), (row_cached,) = read_results(tmp_path / "live" / "results.csv"), read_results(
        tmp_path / "cached" / "results.csv")
    for column in ("train/distill/kd", "train/ce", "metrics/accuracy_top1", "val/loss"):
        assert row_cached[column] == pytest.approx(row_live[column], rel=1e-3, abs=1e-5), column
    assert_same_training(cached.model.state_dict(), live.model.state_dict(), initial)


def test_unlabeled_images_as_lists_and_globs_with_a_fixed_share_of_every_batch(shapes_data, shape_teachers,
                                                                              tmp_path, monkeypatch):
    """--unlabeled takes what detection's does (folders, .txt lists, globs); --unlabeled-ratio puts that many
    unlabeled images beside every labeled batch (labels -1: the KD term only)."""
    pool = sorted((shapes_data / "unlabeled").rglob("*.png"))
    listing = tmp_path / "pool.txt"
    listing.write_text("".join(f"{p}\n" for p in pool[:3]))
    glob_spec = str(shapes_data / "unlabeled" / "**" / "*.png")
    trainer = KDTrainer(_options(shapes_data, tmp_path, "ratio", t_weights=[str(shape_teachers[0])],
                                 unlabeled=[str(listing), glob_spec], unlabeled_ratio=0.5, augment=False)).setup()
    assert len(trainer.train_set) == 3 * 8  # the labeled images alone: the unlabeled ones come as a stream
    # the list's 3 images are among the glob's 6: each is used once, as detection reads the same two specs
    assert trainer.unlabeled_loader.batch_size == 4 and len(trainer.unlabeled_loader.dataset) == 6
    seen = []
    real = KDTrainer.loss_terms

    def spy(self, images, labels, teacher_rows):
        seen.append(((labels >= 0).sum().item(), (labels < 0).sum().item()))
        return real(self, images, labels, teacher_rows)

    monkeypatch.setattr(KDTrainer, "loss_terms", spy)
    trainer.run()
    assert seen == [(8, 4), (8, 4), (8, 4)]  # 24 labeled images in batches of 8, each with 4 unlabeled


def test_unlabeled_images_follow_detections_rules_for_labeled_and_val_images(shapes_data, shape_teachers,
                                                                              tmp_path, caplog):
    """A labeled training image among the unlabeled ones is warned about and used once, as labeled; a
    validation image is refused: the rule `yolodistill train --unlabeled` follows."""
    import logging

    train_image = sorted((shapes_data / "train").rglob("*.png"))[0]
    caplog.set_level(logging.WARNING, logger="yolodistill")
    trainer = KDTrainer(_options(shapes_data, tmp_path, "both", t_weights=[str(shape_teachers[0])],
                                 unlabeled=[str(shapes_data / "unlabeled"), str(train_image)])).setup()
    assert len(trainer.train_set) == 3 * 8 + 6
    assert any("also labeled training images" in r.getMessage() for r in caplog.records)
    val_image = sorted((shapes_data / "val").rglob("*.png"))[0]
    with pytest.raises(UserError, match="1 validation image"):
        KDTrainer(_options(shapes_data, tmp_path, "leak", t_weights=[str(shape_teachers[0])],
                           unlabeled=[str(shapes_data / "unlabeled"), str(val_image)])).setup()
