"""`yolodistill classify ...` end to end (CLIP-to-CNN on a tiny random OpenCLIP), and its one-line user errors."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from yolodistill.cli import main

from .conftest import CLASSIFY_IMGSZ, SHAPES, draw_shape, one_torch_thread

pytest.importorskip("open_clip")

CLIP = "yd-cli-clip"
CLIP16 = "yd-cli-clip16"  # another teacher, with 16-d embeddings
CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
FAST = ["--workers", "0", "--batch-size", "8", "--device", "cpu"]
TRAIN = ["--imgsz", str(CLASSIFY_IMGSZ), "--epochs", "1", *FAST]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def classify(*argv) -> int:
    return main(["classify", *map(str, argv)])


def one_line_error(capsys, *argv) -> str:
    """Run `classify argv`, expect exit 1 and one stderr line 'yolodistill classify: error: ...'; return that line."""
    capsys.readouterr()
    rc = classify(*argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("yolodistill classify: error: "), err
    assert "Traceback" not in err
    return lines[0]


def clip_flags(tmp, name=CLIP, cfg=CFG) -> list:
    config = tmp / f"{name}.json"
    if not config.exists():
        config.write_text(json.dumps(cfg))
    return ["--clip", name, "--clip-config", config, "--random-init"]


@pytest.fixture(scope="module")
def clip_run(shapes_data, tmp_path_factory):
    """embed -> text-embed -> probe -> clip-distill through the CLI; the paths each step wrote."""
    tmp = tmp_path_factory.mktemp("clip_cli")
    (tmp / "prompts.txt").write_text("# sorted like the class folders\na circle\na square\na triangle\n")
    paths = {"tmp": tmp, "store": tmp / "store", "text": tmp / "text.pt", "probe": tmp / "probe.pt"}
    torch.manual_seed(0)
    assert classify("embed", "--source", shapes_data, "--out", paths["store"], *clip_flags(tmp), *FAST) == 0
    assert classify("text-embed", *clip_flags(tmp), "--prompts", tmp / "prompts.txt",
                    "--classes-from", shapes_data / "train", "--out", paths["text"], "--device", "cpu") == 0
    assert classify("probe", "--store", paths["store"], "--data", shapes_data / "train", "--out", paths["probe"]) == 0
    assert classify("clip-distill", "--store", paths["store"], "--head", paths["probe"], "--model", "cnn_small",
                    "--source", shapes_data / "train", shapes_data / "unlabeled", "--val", shapes_data / "val",
                    *TRAIN, "--project", tmp, "--name", "student") == 0
    paths["student"] = tmp / "student" / "weights" / "best.pt"
    return paths


@pytest.mark.slow
def test_clip_pipeline_outputs(clip_run, shapes_data):
    from yolodistill.classification.clip_teacher import load_head
    from yolodistill.classification.store import TeacherStore

    store = TeacherStore.open(clip_run["store"], kind="embedding", dim=32)
    assert len(store) == 3 * 8 + 3 * 3 + 6  # train, val and unlabeled: every image under the source
    assert store.teacher == {"type": "open_clip", "model": CLIP, "weights": None, "bytes": None}
    for name, kind in (("text", "text"), ("probe", "probe")):
        head, teacher = load_head(clip_run[name])
        assert (head.kind, head.classes, tuple(head.weight.shape), teacher) == (kind, list(SHAPES), (3, 32),
                                                                               store.teacher)
    save_dir = clip_run["tmp"] / "student"
    header = (save_dir / "results.csv").read_text().splitlines()[0]
    assert [c.strip() for c in header.split(",")][:3] == ["epoch", "train/distill/cosine", "metrics/accuracy_top1"]
    ckpt = torch.load(clip_run["student"], map_location="cpu", weights_only=True)
    assert (ckpt["arch"], ckpt["num_classes"], ckpt["classes"], ckpt["teacher"]) == ("cnn_small", 32, list(SHAPES),
                                                                                    store.teacher)
    probe, _ = load_head(clip_run["probe"])
    assert torch.equal(ckpt["head"]["weight"], probe.weight) and ckpt["head"]["classes"] == list(SHAPES)


@pytest.mark.slow
def test_clip_distill_kl_with_text_head_and_no_val(clip_run, shapes_data):
    tmp = clip_run["tmp"]
    assert classify("clip-distill", "--store", clip_run["store"], "--head", clip_run["text"], "--loss", "kl",
                    "--model", "cnn_small", *TRAIN, "--project", tmp, "--name", "kl") == 0
    rows = list(csv.reader((tmp / "kl" / "results.csv").open()))
    assert rows[0][1].strip() == "train/distill/kl" and float(rows[1][1]) >= 0
    assert float(rows[1][2]) == float("inf")  # no labeled --val: accuracy unknown
    assert (tmp / "kl" / "weights" / "best.pt").is_file()


def test_predict_file_to_csv(clip_run, shapes_data, tmp_path):
    from yolodistill.classification.clip_teacher import LinearHead
    from yolodistill.classification.data import build_transform, read_image
    from yolodistill.classification.models import load_classifier

    image = shapes_data / "val" / "square" / "000.png"
    out = tmp_path / "pred.csv"
    assert classify("predict", "--weights", clip_run["student"], "--source", image, "--topk", "2",
                    "--save-csv", out) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image", "class1", "prob1", "class2", "prob2"] and len(rows) == 2
    assert rows[1][0] == str(image) and {rows[1][1], rows[1][3]} <= set(SHAPES) and rows[1][1] != rows[1][3]
    # by hand: student embedding -> the head it carries -> softmax
    student, meta = load_classifier(clip_run["student"])
    head = LinearHead(meta["head"]["weight"], meta["head"]["bias"], meta["head"]["scale"], meta["head"]["classes"])
    x = build_transform(meta["imgsz"], meta["mean"], meta["std"], train=False)(read_image(image))[None]
    with torch.no_grad():
        probs = head(student(x)).softmax(1)[0]
    p, i = probs.topk(2)
    assert [rows[1][1], rows[1][3]] == [SHAPES[int(j)] for j in i]
    assert [float(rows[1][2]), float(rows[1][4])] == pytest.approx(p.tolist(), abs=1e-5)


def test_filter_list_mode(clip_run, tmp_path):
    from yolodistill.classification.clip_teacher import load_head
    from yolodistill.classification.store import TeacherStore

    out = tmp_path / "picks"
    assert classify("filter", "--store", clip_run["store"], "--head", clip_run["text"], "--out", out,
                    "--min-prob", "0", "--mode", "list") == 0
    assert [p.name for p in out.iterdir()] == ["picks.csv"]  # list mode copies nothing
    rows = list(csv.DictReader((out / "picks.csv").open()))
    store = TeacherStore.open(clip_run["store"])
    head, _ = load_head(clip_run["text"])
    with torch.no_grad():
        best = head(store.lookup(store.keys)).softmax(1).argmax(1)
    expected = {str(Path(store.source) / k): SHAPES[int(c)] for k, c in zip(store.keys, best)}
    assert len(rows) == len(store)  # min prob 0 keeps every image, each under its best class
    assert {r["image"]: r["class"] for r in rows} == expected


def test_demo_on_a_video_file(clip_run, tmp_path, caplog):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(5):
        writer.write(np.ascontiguousarray(cv2.resize(draw_shape(SHAPES[i % 3], rng), (32, 32))))
    writer.release()
    caplog.set_level(logging.INFO, logger="yolodistill")
    assert classify("demo", "--weights", clip_run["student"], "--camera", video, "--no-show", "--max-frames", "3") == 0
    frames = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frame ")]
    assert [f.split(":")[0] for f in frames] == ["frame 1", "frame 2", "frame 3"]
    assert all(any(c in f for c in SHAPES) for f in frames)


# ---- bad input: one line on stderr, exit 1 -------------------------------------------------------------------------

def test_missing_data_folder(capsys, tmp_path):
    line = one_line_error(capsys, "train", "--data", tmp_path / "nope", "--model", "cnn_small", *TRAIN)
    assert "dataset folder" in line and "does not exist" in line


def test_empty_image_folder(capsys, shape_teachers, tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
    line = one_line_error(capsys, "train", "--data", tmp_path / "data", "--model", "cnn_small", *TRAIN)
    assert "has no images" in line
    (tmp_path / "empty").mkdir()
    assert "has no images" in one_line_error(capsys, "embed", "--source", tmp_path / "empty", "--out",
                                              tmp_path / "store", "--teacher", shape_teachers[1], *FAST)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.slow
def test_unreadable_images_are_skipped_with_a_count(shapes_data, shape_teachers, tmp_path, caplog, capsys):
    import cv2

    data = tmp_path / "data"
    shutil.copytree(shapes_data / "train", data / "train")
    shutil.copytree(shapes_data / "val", data / "val")
    noise = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # incompressible: cuts hurt
    cv2.imwrite(str(data / "train" / "circle" / "cut.jpg"), noise)
    cv2.imwrite(str(data / "train" / "square" / "cut.png"), noise)
    _truncate(data / "train" / "circle" / "cut.jpg")
    _truncate(data / "train" / "square" / "cut.png")
    (data / "train" / "triangle" / "junk.jpg").write_bytes(b"not an image")
    caplog.set_level(logging.INFO, logger="yolodistill")
    assert classify("train", "--data", data, "--model", "cnn_small", *TRAIN, "--project", tmp_path, "--name",
                    "t") == 0
    assert "labeled folder: skipped 3 unreadable or truncated image(s) of 27" in caplog.text
    assert "train 24 images" in caplog.text

    caplog.clear()
    assert classify("embed", "--source", data / "train", "--out", tmp_path / "store", "--teacher",
                    shape_teachers[1], *FAST) == 0
    assert "skipped 3 unreadable or truncated image(s) of 27" in caplog.text
    from yolodistill.classification.store import TeacherStore
    assert len(TeacherStore.open(tmp_path / "store")) == 24

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.jpg", "b.png"):
        shutil.copy(data / "train" / "circle" / "cut.jpg", bad / name)
    line = one_line_error(capsys, "embed", "--source", bad, "--out", tmp_path / "s2", "--teacher", shape_teachers[1],
                          *FAST)
    assert "none of its 2 images can be read" in line
    for c in SHAPES:  # a training split in which nothing decodes
        shutil.rmtree(data / "train" / c)
        shutil.copytree(bad, data / "train" / c)
    assert "none of its 6 images can be read" in one_line_error(capsys, "train", "--data", data, "--model",
                                                                 "cnn_small", *TRAIN, "--project", tmp_path)


def test_prompts_do_not_match_classes(capsys, shapes_data, tmp_path):
    (tmp_path / "prompts.txt").write_text("a circle\na square\n")
    line = one_line_error(capsys, "text-embed", *clip_flags(tmp_path), "--prompts", tmp_path / "prompts.txt",
                          "--classes-from", shapes_data / "train", "--out", tmp_path / "head.pt")
    assert "has 2 classes, the labeled data has 3" in line and not (tmp_path / "head.pt").exists()


@pytest.mark.slow
def test_store_and_head_of_different_teachers(capsys, clip_run, shapes_data, tmp_path):
    (tmp_path / "prompts.txt").write_text("a circle\na square\na triangle\n")
    cfg16 = {**CFG, "embed_dim": 16}
    head16 = tmp_path / "head16.pt"
    assert classify("text-embed", *clip_flags(tmp_path, CLIP16, cfg16), "--prompts", tmp_path / "prompts.txt",
                    "--out", head16, "--device", "cpu") == 0
    line = one_line_error(capsys, "clip-distill", "--store", clip_run["store"], "--head", head16, "--model",
                          "cnn_small", *TRAIN, "--project", tmp_path)
    assert f"made with open_clip {CLIP16}" in line and f"with open_clip {CLIP}:" in line
    assert "use one teacher" in one_line_error(capsys, "filter", "--store", clip_run["store"], "--head", head16,
                                               "--out", tmp_path / "picks")
    assert "another teacher" in one_line_error(capsys, "predict", "--weights", clip_run["student"], "--head", head16,
                                               "--source", shapes_data / "val")
    # an embedding store where Hinton KD wants logits
    line = one_line_error(capsys, "distill", "--data", shapes_data, "--teacher-store", clip_run["store"],
                          "--model", "cnn_small", *TRAIN, "--project", tmp_path)
    assert "built by embedding, not by logits" in line


def test_head_of_another_dimension_under_the_same_teacher_name(capsys, clip_run, tmp_path):
    """A head whose width is not the store's (a config edited under the same name) is refused before training."""
    from yolodistill.classification.clip_teacher import LinearHead, save_head
    from yolodistill.classification.store import TeacherStore

    store = TeacherStore.open(clip_run["store"])
    head = tmp_path / "head16.pt"
    save_head(LinearHead(torch.randn(3, 16), torch.zeros(3), 1.0, list(SHAPES)), head, teacher=store.teacher)
    line = one_line_error(capsys, "clip-distill", "--store", clip_run["store"], "--head", head, "--model",
                          "cnn_small", *TRAIN, "--project", tmp_path)
    assert "16" in line and "32" in line
    line = one_line_error(capsys, "filter", "--store", clip_run["store"], "--head", head, "--out", tmp_path / "p")
    assert "16" in line and "32" in line


def test_unknown_timm_model(capsys, shapes_data, tmp_path):
    line = one_line_error(capsys, "train", "--data", shapes_data, "--model", "resnet_nonexistent", *TRAIN,
                          "--project", tmp_path)
    assert "unknown model 'resnet_nonexistent'" in line


def test_unknown_openclip_model(capsys, shapes_data, tmp_path):
    line = one_line_error(capsys, "embed", "--source", shapes_data / "val", "--out", tmp_path / "s", "--clip",
                          "ViT-Nope-99", "--random-init", *FAST)
    assert "unknown OpenCLIP model 'ViT-Nope-99'" in line


def test_pretrained_file_missing(capsys, shapes_data, tmp_path):
    missing = tmp_path / "resnet18.pth"
    line = one_line_error(capsys, "train", "--data", shapes_data, "--model", "resnet18", "--pretrained", missing,
                          *TRAIN, "--project", tmp_path)
    assert f"pretrained weights {missing} not found" in line
    line = one_line_error(capsys, "embed", "--source", shapes_data / "val", "--out", tmp_path / "s",
                          *clip_flags(tmp_path)[:4], "--pretrained", tmp_path / "open_clip_model.safetensors", *FAST)
    assert "local files only" in line


def test_distill_needs_a_teacher(capsys, shapes_data, tmp_path):
    line = one_line_error(capsys, "distill", "--data", shapes_data, "--model", "cnn_small", *TRAIN,
                          "--project", tmp_path)
    assert "--t_weights CKPT" in line and "--teacher-store" in line


def test_val_scores_a_checkpoint_on_a_split_and_refuses_a_missing_one(shape_teachers, shapes_data, caplog, capsys):
    from yolodistill.classification.trainer import score_checkpoint

    caplog.set_level(logging.INFO, logger="yolodistill")
    teacher = shape_teachers[0]
    assert classify("val", "--weights", teacher, "--data", shapes_data, "--split", "val") == 0
    line = next(r.getMessage() for r in caplog.records if "top-1" in r.getMessage())
    top1 = score_checkpoint(teacher, shapes_data, split="val")["metrics/accuracy_top1"]
    assert f"top-1 {top1:.4f}" in line and f"on {shapes_data}/val" in line
    # shapes_data has no test/: one line naming it, no traceback
    assert "test" in one_line_error(capsys, "val", "--weights", teacher, "--data", shapes_data)
