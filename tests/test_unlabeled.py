"""Detection distillation on unlabeled images (`yolodistill train --unlabeled`): which images, the loader, the mix
in every batch, the task loss over the labeled images only, and the inputs refused."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from yolodistill import yolo_backend as yb
from yolodistill.cli import main
from yolodistill.errors import UserError
from yolodistill.run_logger import read_results

from .conftest import IMGSZ, interrupt_at_epoch, make_tiny_dataset

BASE = ["--imgsz", str(IMGSZ), "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noplots",
        "--noautoanchor", "--cfg", "yolov5n.yaml"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A folder of 10 images that do have label files beside them: the loader must not read those."""
    src = make_tiny_dataset(tmp_path_factory.mktemp("pool_src")).parent
    folder = tmp_path_factory.mktemp("pool")
    for i, img in enumerate(sorted((src / "images" / "train").iterdir())[:10]):
        shutil.copy(img, folder / f"u{i}.png")
        (folder / f"u{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return folder


def _err(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_loader_ignores_labels_beside_the_images_and_augments(pool, tmp_path):
    folder = tmp_path / "pool"
    shutil.copytree(pool, folder)
    (folder / "u3.txt").write_text("0 0.5\n7 2 -1 0 0\n")  # malformed: would drop u3.png as a labeled image
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in yb.image_files([str(folder)], "--unlabeled")))
    hyp = yb.load_hyp(None)
    yolov5_log, said = logging.getLogger("yolov5"), []
    filters, level = list(yolov5_log.filters), yolov5_log.level
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    yolov5_log.addHandler(handler)
    yolov5_log.setLevel(logging.INFO)  # other tests may have quieted it
    try:
        loader = yb.create_unlabeled_loader(str(listing), IMGSZ, 4, 32, hyp, workers=0, seed=0)
    finally:
        yolov5_log.removeHandler(handler)
        yolov5_log.setLevel(level)
    assert said and not any("No labels found" in m for m in said)  # yolov5 spoke, but not of missing labels
    assert yolov5_log.filters == filters  # the filter is gone again
    assert len(loader.dataset) == 10 and all(len(lb) == 0 for lb in loader.dataset.labels)
    assert loader.dataset.mosaic and loader.dataset.augment
    imgs, targets, _, _ = next(iter(loader))
    assert imgs.shape == (4, 3, IMGSZ, IMGSZ) and imgs.dtype == torch.uint8 and len(targets) == 0


def test_image_files_accepts_folders_lists_and_globs(pool, tmp_path):
    files = yb.image_files([str(pool)], "--unlabeled")
    assert len(files) == 10
    listing = tmp_path / "some.txt"
    listing.write_text(f"{files[0]}\n{Path(files[1]).name}\n")  # absolute, and relative to the list's folder
    shutil.copy(files[1], tmp_path / Path(files[1]).name)
    assert yb.image_files([str(listing)], "x") == [files[0], str((tmp_path / Path(files[1]).name).resolve())]
    assert yb.image_files([str(pool / "u[0-2].png")], "x") == files[:3]


def test_unlabeled_images_get_the_distillation_terms_in_every_batch(caplog, tiny_data, teacher_weights, pool,
                                                                    tmp_path):
    import logging

    caplog.set_level(logging.INFO, logger="yolodistill")
    assert main(["train", *BASE, "--data", str(tiny_data), "--t_weights", str(teacher_weights), "--d_output",
                 "--unlabeled", str(pool), "--unlabeled-ratio", "0.5", "--epochs", "2", "--project", str(tmp_path),
                 "--name", "u", "--batch-size", "16"]) == 0
    run = tmp_path / "u"
    rows = read_results(run / "results.csv")
    # 24 labeled images in batches of 16 and 8, with 0.5 * 16 = 8 and 0.5 * 8 = 4 unlabeled images beside them
    assert [(r["x/labeled_images"], r["x/unlabeled_images"]) for r in rows] == [(24, 12), (24, 12)]
    assert all(r["train/distill/output"] > 0 for r in rows)
    assert len((run / "unlabeled.txt").read_text().splitlines()) == 10
    logged = [r.getMessage() for r in caplog.records]
    assert logged.count("epoch 1: 24 labeled and 12 unlabeled images") == 1
    assert any(m.split()[-3:] == ["Instances", "Size", "Images"] for m in logged)  # the progress bar's header


def test_task_loss_counts_only_the_labeled_images(teacher_weights):
    """The first n_labeled images carry the targets; the others add to the distillation terms only."""
    from yolodistill.detection.trainer import DistillTrainer

    torch.manual_seed(0)
    student = yb.build_model("yolov5n.yaml", 2).train()
    yb.prepare_for_loss(student, yb.load_hyp(None), 2, IMGSZ, {0: "a", 1: "b"}, [torch.zeros((0, 5)).numpy()])
    trainer = DistillTrainer.__new__(DistillTrainer)
    trainer.loss_names, trainer.distiller = ("box_loss", "obj_loss", "cls_loss", "distill/output"), object()
    trainer.compute_loss = yb.ComputeLoss(student)
    imgs = torch.rand(6, 3, IMGSZ, IMGSZ)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 0, 0.4, 0.6, 0.2, 0.2]])
    pred = student(imgs)
    term = {"distill/output": torch.tensor(0.25)}
    total, items = trainer.total_loss(imgs, pred, targets, term, n_labeled=2)
    alone, alone_items = trainer.compute_loss([p[:2] for p in pred], targets)
    assert torch.equal(items[:3], alone_items)
    assert torch.allclose(total, alone.reshape(()) + 0.25 * 6)  # distillation over all six images


def test_unlabeled_images_add_nothing_when_the_teacher_is_the_student():
    """Teacher = student: a batch of unlabeled images gives a total loss of exactly zero, and unlabeled images
    beside labeled ones leave the labeled images' task loss as it is, bit for bit."""
    from yolodistill.config import DistillConfig
    from yolodistill.detection.distillation import detection_distiller, loss_names
    from yolodistill.detection.teacher import FrozenTeacher
    from yolodistill.detection.trainer import DistillTrainer

    torch.manual_seed(0)
    student, twin = yb.build_model("yolov5n.yaml", 2), yb.build_model("yolov5n.yaml", 2)
    twin.load_state_dict(student.state_dict())
    student.eval()  # BN on running statistics, as the frozen teacher
    yb.prepare_for_loss(student, yb.load_hyp(None), 2, IMGSZ, {0: "a", 1: "b"}, [torch.zeros((0, 5)).numpy()])
    config = DistillConfig(output=True, feature=True)
    trainer = DistillTrainer.__new__(DistillTrainer)
    trainer.loss_names, trainer.compute_loss = loss_names(config), yb.ComputeLoss(student)
    trainer.distiller = detection_distiller(student, FrozenTeacher(twin), config, gains={"box": 0.05, "obj": 1.0,
                                            "cls": 0.5}, imgsz=IMGSZ, device=torch.device("cpu")).attach()
    imgs = torch.rand(6, 3, IMGSZ, IMGSZ)
    out, terms = trainer.distiller(imgs)
    pred = yb.raw_head_outputs(out)
    total, items = trainer.total_loss(imgs, pred, None, terms)  # all six unlabeled
    assert float(total.detach()) == 0.0 and not items.any()
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 0, 0.4, 0.6, 0.2, 0.2]])
    mixed, _ = trainer.total_loss(imgs, pred, targets, terms, n_labeled=2)
    alone, _ = trainer.compute_loss([p[:2] for p in pred], targets)
    assert float(alone) > 0 and torch.equal(mixed, alone.reshape(()))
    trainer.distiller.remove()


def test_bad_unlabeled_inputs_are_one_line(capsys, caplog, tiny_data, teacher_weights, pool, tmp_path):
    import logging

    teach = ["--t_weights", str(teacher_weights), "--d_output"]
    run = ["train", *BASE, "--data", str(tiny_data), "--epochs", "1", "--project", str(tmp_path)]
    assert "learn from a teacher" in _err(capsys, [*run, "--name", "a", "--unlabeled", str(pool)])  # no teacher
    assert "learn from a teacher" in _err(  # a teacher, but neither its soft outputs nor its boxes
        capsys, [*run, "--t_weights", str(teacher_weights), "--name", "a2", "--unlabeled", str(pool)])
    assert _err(capsys, [*run, *teach, "--name", "b", "--unlabeled", str(tmp_path / "nope")]) == \
        f"yolodistill train: error: --unlabeled {tmp_path / 'nope'} does not exist"
    val = tiny_data.parent / "images" / "val"
    assert "validation image" in _err(capsys, [*run, *teach, "--name", "c", "--unlabeled", str(val)])
    assert "drop --rect" in _err(capsys, [*run, *teach, "--name", "d", "--rect", "--unlabeled", str(pool)])
    assert "drop --quad" in _err(capsys, [*run, *teach, "--name", "d2", "--quad", "--unlabeled", str(pool)])
    assert "--unlabeled-ratio must be positive" in _err(
        capsys, [*run, *teach, "--name", "e", "--unlabeled", str(pool), "--unlabeled-ratio", "0"])
    assert "fewer than the 16 every batch takes" in _err(  # 10 images, 2 x 8 a batch: no batch could be full
        capsys, [*run, *teach, "--name", "g", "--unlabeled", str(pool), "--unlabeled-ratio", "2"])
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir(), junk.mkdir()
    (junk / "a.png").write_bytes(b""), (junk / "b.jpg").write_bytes(b"not an image")
    assert _err(capsys, [*run, *teach, "--name", "h", "--unlabeled", str(empty)]).endswith(
        f"--unlabeled {empty}: no images found")
    assert "none of the 2 unlabeled images is readable" in _err(
        capsys, [*run, *teach, "--name", "i", "--unlabeled", str(junk)])
    # a labeled training image among the unlabeled ones: warned about and used once, as labeled
    caplog.set_level(logging.WARNING, logger="yolodistill")
    train = tiny_data.parent / "images" / "train"
    assert main([*run, *teach, "--name", "f", "--unlabeled", str(pool), str(train / "0000.png")]) == 0
    assert any("also labeled training images" in r.getMessage() for r in caplog.records)
    assert len((tmp_path / "f" / "unlabeled.txt").read_text().splitlines()) == 10


def test_pseudo_labels_are_the_teachers_boxes_as_targets(teacher_weights):
    """Normalised xywh inside the image, the image index counted from first_index, classes of the teacher."""
    model = yb.load_model(teacher_weights).eval()
    imgs = torch.rand(3, 3, IMGSZ, IMGSZ)
    boxes = yb.pseudo_labels(model, imgs, conf_thres=0.0001, first_index=5)
    assert boxes.shape[1] == 6 and len(boxes) > 0  # an untrained teacher is unsure of everything: many boxes
    assert set(boxes[:, 0].long().tolist()) <= {5, 6, 7} and set(boxes[:, 1].long().tolist()) <= {0, 1}
    assert (boxes[:, 2:4] >= 0).all() and (boxes[:, 2:4] <= 1).all() and (boxes[:, 4:] > 0).all()
    assert len(yb.pseudo_labels(model, imgs, conf_thres=0.9999)) <= len(boxes)
    # image by image, the teacher's own post-NMS detections (pixels xyxy), in the dataloader's label form
    from yolov5.utils.general import non_max_suppression
    for j, det in enumerate(non_max_suppression(model(imgs)[0], 0.0001, 0.45, max_det=300)):
        mine = boxes[boxes[:, 0] == 5 + j]
        xyxy = torch.cat([mine[:, 2:4] - mine[:, 4:] / 2, mine[:, 2:4] + mine[:, 4:] / 2], 1) * IMGSZ
        assert torch.equal(mine[:, 1], det[:, 5]) and len(mine) == len(det)
        # xywh / IMGSZ and back: a few float32 roundings of numbers up to IMGSZ
        assert torch.allclose(xyxy, det[:, :4], rtol=0, atol=IMGSZ * 8 * torch.finfo(torch.float32).eps)


def test_pseudo_labels_train_and_are_counted(capsys, tiny_data, teacher_weights, pool, tmp_path):
    """With the soft terms (--d_output) or alone (the teacher only labels the unlabeled images)."""
    run = ["train", *BASE, "--data", str(tiny_data), "--t_weights", str(teacher_weights), "--d_output",
           "--epochs", "1", "--project", str(tmp_path)]
    assert main([*run, "--name", "p", "--unlabeled", str(pool), "--pseudo-labels", "0.0001"]) == 0
    row = read_results(tmp_path / "p" / "results.csv")[0]
    assert row["x/unlabeled_images"] == 24 and row["x/pseudo_boxes"] > 0 and "train/distill/output" in row
    alone = [a for a in run if a != "--d_output"]
    assert main([*alone, "--name", "a", "--unlabeled", str(pool), "--pseudo-labels", "0.0001"]) == 0
    row = read_results(tmp_path / "a" / "results.csv")[0]
    assert row["x/unlabeled_images"] == 24 and row["x/pseudo_boxes"] > 0
    assert not any(k.startswith("train/distill") for k in row)
    assert "give --unlabeled too" in _err(capsys, [*run, "--name", "q", "--pseudo-labels", "0.5"])
    assert "confidence threshold" in _err(capsys, [*run, "--name", "r", "--unlabeled", str(pool),
                                                   "--pseudo-labels", "1.5"])


def test_each_epochs_stream_depends_only_on_seed_and_epoch(pool, tmp_path):
    """What --resume relies on: the resumed run's epoch e sees the unlabeled batches the uninterrupted one did
    (order and augmentation: the latter is seeded in the loader's worker processes, as with --workers >= 1)."""
    from yolodistill.distributed import DistContext
    from yolodistill.detection.unlabeled import UnlabeledImages

    files = yb.image_files([str(pool)], "--unlabeled")

    def first_batches(epoch, n=3):
        images = UnlabeledImages(files, save_dir=tmp_path, labeled_batch=4, ratio=1.0, imgsz=IMGSZ, stride=32,
                                 hyp=yb.load_hyp(None), workers=1, seed=7, dist=DistContext())
        stream = images.stream(epoch)
        return [next(stream) for _ in range(n)]  # 3 batches of 4 from 10 images: the stream wraps around

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_an_interrupted_run_with_unlabeled_images_resumes(tiny_data, teacher_weights, pool, tmp_path, monkeypatch):
    from yolodistill.detection import trainer as trainer_mod

    real = interrupt_at_epoch(monkeypatch, 1)
    assert main(["train", *BASE, "--data", str(tiny_data), "--t_weights", str(teacher_weights), "--d_output",
                 "--unlabeled", str(pool), "--epochs", "2", "--project", str(tmp_path), "--name", "r"]) == 130
    monkeypatch.setattr(trainer_mod.DistillTrainer, "train_epoch", real)
    assert main(["train", "--resume", str(tmp_path / "r" / "weights" / "last.pt")]) == 0
    rows = read_results(tmp_path / "r" / "results.csv")
    assert [(r["epoch"], r["x/unlabeled_images"]) for r in rows] == [(0, 24), (1, 24)]


def test_unreadable_unlabeled_images_are_skipped_with_a_count(caplog, tiny_data, teacher_weights, pool, tmp_path):
    import logging

    folder = tmp_path / "mixed"
    shutil.copytree(pool, folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "junk.jpg").write_bytes(b"not an image at all")
    caplog.set_level(logging.WARNING, logger="yolodistill")
    assert main(["train", *BASE, "--data", str(tiny_data), "--t_weights", str(teacher_weights), "--d_output",
                 "--unlabeled", str(folder), "--epochs", "1", "--project", str(tmp_path), "--name", "m"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unlabeled: WARNING: skipped")]
    assert len(warned) == 1 and "skipped 2 of 12 images" in warned[0] and "using the other 10" in warned[0]


def test_the_dataset_yamls_unlabeled_key_takes_the_forms_of_the_flag(tiny_data, pool, tmp_path):
    """`unlabeled:` in the dataset yaml: a glob (relative to the yaml's path:), as --unlabeled takes it."""
    import yaml

    from yolodistill.detection.train_options import TrainOptions
    from yolodistill.detection.unlabeled import select_unlabeled

    data = yaml.safe_load(tiny_data.read_text())
    data.update({k: str(tiny_data.parent / data[k]) for k in ("train", "val")})
    data.update(path=str(pool.parent), unlabeled=f"{pool.name}/u[0-4].png")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    resolved = yb.load_data_yaml(tmp_path / "d.yaml")
    files = select_unlabeled(TrainOptions(), resolved, distilling=True, labeled=[])
    assert files == yb.image_files([str(pool / "u[0-4].png")], "x") and len(files) == 5
    data.update(unlabeled="nowhere/*.png")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"d.yaml: unlabeled .*nowhere/\*.png: no images found"):
        yb.load_data_yaml(tmp_path / "d.yaml")


def test_a_pool_smaller_than_a_batch_on_each_rank_is_refused_not_looped_over(pool, tmp_path):
    """Under torchrun each rank reads ceil(n / ranks) images in full batches: fewer than one batch would give an
    endless stream of nothing."""
    from torch.utils.data import DataLoader

    from yolodistill.training import endless_batches

    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in yb.image_files([str(pool)], "--unlabeled")))
    hyp = yb.load_hyp(None)
    with pytest.raises(UserError, match=r"10 usable images over 2 ranks \(5 a rank\), fewer than the 6"):
        yb.create_unlabeled_loader(str(listing), IMGSZ, 6, 32, hyp, workers=0, seed=0, rank=1, world_size=2)
    assert len(yb.create_unlabeled_loader(str(listing), IMGSZ, 5, 32, hyp, workers=0, seed=0, rank=1,
                                          world_size=2)) == 1
    nothing = DataLoader(list(range(3)), batch_size=4, drop_last=True, generator=torch.Generator())
    with pytest.raises(RuntimeError, match="gives no batch"):
        next(endless_batches(nothing, seed=0, epoch=0))


def test_pseudo_labels_take_the_datasets_classes(capsys, tiny_data, teacher_weights, pool, tmp_path, monkeypatch):
    """The teacher's classes become targets: a dataset class the teacher lacks is refused; under --single-cls every
    pseudo-box is class 0, as yolov5 makes every label."""
    from yolodistill.detection import trainer as trainer_mod

    three = tmp_path / "three.yaml"
    three.write_text(tiny_data.read_text().replace("nc: 2", "nc: 3").replace("circle]", "circle, star]"))
    run = ["train", *BASE, "--t_weights", str(teacher_weights), "--unlabeled", str(pool), "--pseudo-labels",
           "0.0001", "--epochs", "1", "--project", str(tmp_path)]
    assert "has no class named 'star'" in _err(capsys, [*run, "--data", str(three), "--name", "n"])
    classes = []
    real = trainer_mod.DistillTrainer.training_step

    def record(self, batch, iteration):
        classes.extend(batch.targets[:, 1].tolist())
        return real(self, batch, iteration)

    monkeypatch.setattr(trainer_mod.DistillTrainer, "training_step", record)
    assert main([*run, "--data", str(tiny_data), "--single-cls", "--name", "s"]) == 0
    assert read_results(tmp_path / "s" / "results.csv")[0]["x/pseudo_boxes"] > 0 and set(classes) == {0.0}
