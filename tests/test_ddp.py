"""torchrun + DistributedDataParallel on the CPU (gloo), against a single process with the same global batch,
and the out-of-memory message."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from yolodistill.cli import main

from .conftest import assert_same_training

IMGSZ = 64
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _identical_dataset(src_yaml: Path, root: Path, n: int = 16) -> Path:
    """n copies of one image and its labels: every batch is then the same whatever the sampler hands each rank,
    so one process with batch 8 and two with 4 each must compute the same losses and gradients."""
    src_root = src_yaml.parent
    img = sorted((src_root / "images" / "train").iterdir())[0]
    lab = src_root / "labels" / "train" / f"{img.stem}.txt"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n if split == "train" else 4):
            shutil.copy(img, root / "images" / split / f"{i:03d}{img.suffix}")
            shutil.copy(lab, root / "labels" / split / f"{i:03d}.txt")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: 2\n"
                                    f"names: [rect, circle]\n")
    return root / "data.yaml"


def _no_augmentation_hyp(tmp_path: Path) -> Path:
    from yolodistill.paths import cfg_path

    hyp = yaml.safe_load(cfg_path("hyp.quickstart.yaml").read_text())
    hyp.update(mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0)
    path = tmp_path / "hyp.noaug.yaml"
    path.write_text(yaml.safe_dump(hyp))
    return path


def _train_args(data: Path, hyp: Path, teacher: Path, project: Path, name: str) -> list[str]:
    return ["train", "--cfg", "yolov5n.yaml", "--data", str(data), "--hyp", str(hyp), "--t_weights", str(teacher),
            "--d_feature", "--imgsz", str(IMGSZ), "--epochs", "2", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--project", str(project), "--name", name, "--noplots", "--noautoanchor",
            "--optimizer", "AdamW"]


def _losses(run: Path) -> list[dict[str, float]]:
    with open(run / "results.csv") as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [{k: v for k, v in r.items() if k.startswith("train/")} for r in rows]


def test_two_ranks_match_one_process_with_the_same_global_batch(tiny_data, teacher_weights, tmp_path):
    data = _identical_dataset(tiny_data, tmp_path / "same")
    hyp = _no_augmentation_hyp(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLOv5_VERBOSE": "False"}
    # --output-loss mse: every term a mean over cells, so a rank's half of identical images gives the whole
    # batch's value. The default mse_ciou averages boxes over the teacher's objects, per rank as yolov5 averages
    # its own box loss over a rank's targets; this random teacher sees less than one object's worth, where that
    # average becomes a sum (losses/output.py, MIN_OBJECT_MASS) and so depends on how many images a rank holds.
    mse = ["--output-loss", "mse"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "yolodistill",
           *_train_args(data, hyp, teacher_weights, tmp_path, "ddp"), *mse]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP: rank 0 of 2 on cpu, 4 images per rank" in proc.stderr + proc.stdout
    with torch.inference_mode(False):
        assert main([*_train_args(data, hyp, teacher_weights, tmp_path, "single"), *mse]) == 0

    ddp, single = _losses(tmp_path / "ddp"), _losses(tmp_path / "single")
    assert len(ddp) == len(single) == 2  # rank 0 alone wrote results.csv, one row per epoch
    for d, s in zip(ddp, single):
        assert set(d) == set(s) and "train/distill/feature" in d
        # Same data, same global batch: the same losses, epoch after epoch, to float error. Losses, not weights:
        # AdamW can send a weight whose gradient is within rounding of zero a full step either way, which moves a
        # loss only to second order (its gradient is ~0); 2e-3 leaves room for that over the 4 optimizer steps.
        for k in d:
            assert d[k] == pytest.approx(s[k], rel=2e-3, abs=1e-6), (k, d[k], s[k])
    # rank 0 saved plain students; nothing was written by rank 1 under another exp folder
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ddp", "same", "single"]
    from yolodistill.checkpoint import load_checkpoint
    from yolodistill.yolo_backend import YOLOV5_CHECKPOINT_ALIASES, YOLOV5_CHECKPOINT_MODULES

    best = load_checkpoint(tmp_path / "ddp" / "weights" / "best.pt", allowed_prefixes=YOLOV5_CHECKPOINT_MODULES,
                           aliases=YOLOV5_CHECKPOINT_ALIASES)
    assert best["epoch"] == -1 and best.get("distill") is None
    assert not any("DistributedDataParallel" in type(m).__name__ for m in best["model"].modules())


def test_batch_size_must_split_over_the_ranks(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    rc = main(["train", "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--batch-size", "8", "--epochs", "1",
               "--device", "cpu", "--project", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "yolodistill train: error: --batch-size 8 is not a multiple of the 3 processes"


def test_out_of_memory_is_one_line_with_a_smaller_batch(tiny_data, tmp_path, monkeypatch, capsys):
    from yolodistill.detection import trainer

    def oom(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer.DistillTrainer, "training_step", oom)
    rc = main(["train", "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--imgsz", str(IMGSZ), "--epochs", "1",
               "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
               "--noplots", "--noautoanchor"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("yolodistill train: error: CUDA out of memory at --batch-size 8: "
                                            "try --batch-size 4 (or a smaller --imgsz)")


def _classify_args(data: Path, teacher: Path, project: Path, name: str) -> list[str]:
    # 24 training images and a global batch of 24: every step of one process and of two ranks (12 each, their
    # union the same 24) averages the same per-image gradients, whatever order each sampler chose. SGD, because
    # its step is linear in the gradient: AdamW divides by sqrt(v), so a weight whose gradient is within rounding
    # of zero can take a full step either way, and how often that happens depends on the torch build's kernels.
    return ["classify", "distill", "--data", str(data), "--teacher", str(teacher), "--model", "mlp_small",
            "--imgsz", "24", "--epochs", "2", "--batch-size", "24", "--workers", "0", "--device", "cpu",
            "--no-augment", "--optimizer", "SGD", "--lr0", "3e-3", "--project", str(project), "--name", name]


# The runs sum the same 24 per-image terms in another order: the first epoch's mean losses differ by at most
# gamma_24 ~ 1.4e-6 relative (see conftest), 70x below LOSS_RTOL; later ones by that plus the change from weights
# that differ by far less than a step.
LOSS_RTOL = 1e-4


def test_classify_two_ranks_match_one_process(shapes_data, shape_teachers, tmp_path):
    from yolodistill.classification.models import read_checkpoint
    from yolodistill.run_logger import read_results

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "yolodistill",
           *_classify_args(shapes_data, shape_teachers[0], tmp_path, "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(_classify_args(shapes_data, shape_teachers[0], tmp_path, "single")) == 0
    # the weights both runs started from (the same seed draws the same initial student): lr 0 keeps them
    assert main([*_classify_args(shapes_data, shape_teachers[0], tmp_path, "init"), "--lr0", "0"]) == 0

    ddp, single = read_results(tmp_path / "ddp" / "results.csv"), read_results(tmp_path / "single" / "results.csv")
    assert len(ddp) == len(single) == 2
    for d, s in zip(ddp, single):
        for k in ("train/distill/kd", "train/ce", "val/loss", "metrics/accuracy_top1"):
            assert d[k] == pytest.approx(s[k], rel=LOSS_RTOL), (k, d[k], s[k])
    w_ddp, w_single, w_init = (read_checkpoint(tmp_path / n / "weights" / "last.pt")["model"]
                               for n in ("ddp", "single", "init"))
    assert all(not torch.equal(w_single[k], w_init[k]) for k in w_single)  # trained: the comparison means something
    assert_same_training(w_ddp, w_single, w_init)


def test_classify_feature_kd_under_torchrun(shapes_data, shape_teachers, tmp_path):
    """Feature KD's adapters go into DDP with the student (a BatchNorm student: runs, not compared)."""
    from yolodistill.classification.models import read_checkpoint
    from yolodistill.run_logger import read_results

    args = _classify_args(shapes_data, shape_teachers[0], tmp_path, "fkd")
    args[args.index("mlp_small")] = "cnn_small"
    args += ["--feature-layers", "auto", "--batch-size", "8"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "yolodistill", *args]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results(tmp_path / "fkd" / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1] and all(r["train/distill/feature"] > 0 for r in rows)
    ckpt = read_checkpoint(tmp_path / "fkd" / "weights" / "best.pt")
    assert not any(k.startswith(("adapters.", "student.")) for k in ckpt["model"])  # the plain student


def test_classify_out_of_memory_is_one_line(shapes_data, tmp_path, monkeypatch, capsys):
    from yolodistill.classification import trainer

    def oom(self, epoch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer.ClassifyTrainer, "train_epoch", oom)
    rc = main(["classify", "train", "--data", str(shapes_data), "--model", "cnn_small", "--imgsz", "24",
               "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu",
               "--project", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("yolodistill classify: error: CUDA out of memory at --batch-size 16: "
                                            "try --batch-size 8 (or a smaller --imgsz)")


def test_a_rank_that_joined_a_group_exits_without_teardown_and_keeps_its_output():
    """distributed.exit_rank: the exit code and everything printed come through; atexit handlers (the
    interpreter's teardown, where gloo threads kept alive by DDP abort the process) do not run."""
    code = ("import atexit, sys\n"
            "from yolodistill import distributed\n"
            "atexit.register(lambda: print('teardown'))\n"
            "distributed._joined = {joined}\n"
            "sys.stdout.write('saved'); sys.stderr.write('logged')\n"
            "distributed.exit_rank(3)\n")
    rank = subprocess.run([sys.executable, "-c", code.format(joined=True)], capture_output=True, text=True)
    assert (rank.returncode, rank.stdout, rank.stderr) == (3, "saved", "logged")
    plain = subprocess.run([sys.executable, "-c", code.format(joined=False)], capture_output=True, text=True)
    assert (plain.returncode, plain.stdout) == (3, "savedteardown\n")  # a plain process ends as usual


def test_unlabeled_images_are_sharded_and_mixed_per_rank(tiny_data, teacher_weights, tmp_path):
    """--unlabeled under torchrun: each rank takes its shard of both kinds, the ratio holds per rank, and the
    counts in results.csv are over all ranks."""
    pool = tiny_data.parent / "images" / "train"  # the labeled images, as a pool: copied so they are not labeled
    unlabeled = tmp_path / "pool"
    shutil.copytree(pool, unlabeled)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLOv5_VERBOSE": "False"}
    args = ["train", "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights", str(teacher_weights),
            "--d_output", "--imgsz", str(IMGSZ), "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--project", str(tmp_path), "--name", "u", "--noplots", "--noautoanchor",
            "--unlabeled", str(unlabeled), "--unlabeled-ratio", "0.5"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "yolodistill", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unlabeled: 24 images, 2 in every batch beside 4 labeled" in proc.stderr + proc.stdout
    row = {k.strip(): float(v) for k, v in next(csv.DictReader(open(tmp_path / "u" / "results.csv"))).items()}
    # 24 labeled images: 3 batches of 4 on each rank, each with 2 unlabeled beside them
    assert (row["x/labeled_images"], row["x/unlabeled_images"]) == (24, 12)
