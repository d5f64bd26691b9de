"""Teachers alone and as an ensemble, and stores of their outputs, against running each model by hand."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from yolodistill.classification.data import build_transform, list_images, read_image
from yolodistill.classification.embed import embed_classifiers, embed_clip
from yolodistill.classification.losses import soft_targets
from yolodistill.classification.models import IMAGENET_MEAN, IMAGENET_STD, load_classifier
from yolodistill.classification.store import TeacherStore
from yolodistill.classification.teachers import ClassifierTeachers

from .conftest import CLASSIFY_IMGSZ, SHAPES, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def _normalise(pixels, mean, std):
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_ensemble_is_each_teacher_alone(shape_teachers):
    teachers = ClassifierTeachers(shape_teachers)
    alone = [load_classifier(p)[0] for p in shape_teachers]
    assert teachers.classes == list(SHAPES) and len(teachers.members) == 2
    teachers.train()  # a teacher stays in eval mode whatever the caller does
    assert not teachers.training and not any(m.training for m in teachers.modules())
    assert not any(p.requires_grad for p in teachers.parameters())

    pixels = torch.rand(4, 3, CLASSIFY_IMGSZ, CLASSIFY_IMGSZ, generator=torch.Generator().manual_seed(0))
    # the student's batch, normalised its own way: the teachers map it back to their ImageNet normalisation
    s_mean, s_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = teachers(_normalise(pixels, s_mean, s_std), s_mean, s_std)
    assert out.shape == (4, 2, 3) and not out.requires_grad
    with torch.no_grad():
        expected = [m(_normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)) for m in alone]
    for i in range(2):
        torch.testing.assert_close(out[:, i], expected[i], rtol=1e-4, atol=1e-5)
    # the ensemble's targets: mean of each teacher's softened probabilities
    torch.testing.assert_close(soft_targets(list(out.unbind(1)), 4.0),
                               (F.softmax(expected[0] / 4, 1) + F.softmax(expected[1] / 4, 1)) / 2,
                               rtol=1e-4, atol=1e-6)

    # a student at another size: the pixels are resized to the teachers' 24 px
    big = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = teachers(_normalise(big, s_mean, s_std), s_mean, s_std)
    resized = F.interpolate(big, size=(CLASSIFY_IMGSZ, CLASSIFY_IMGSZ), mode="bilinear", align_corners=False,
                            antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(out[:, 1], alone[1](_normalise(resized, IMAGENET_MEAN, IMAGENET_STD)),
                                   rtol=1e-4, atol=1e-5)


def test_logits_store_equals_live_teachers(shapes_data, shape_teachers, tmp_path):
    teachers = ClassifierTeachers(shape_teachers)
    source = shapes_data / "val"
    out = embed_classifiers(source, tmp_path / "logits", teachers, batch_size=4, workers=0)
    store = TeacherStore.open(out, kind="logits", dim=6, teacher=teachers.identity)
    assert store.keys == tuple(list_images(source)) and len(store) == 3 * len(SHAPES)
    assert store.teacher["checkpoints"] == ["best.pt", "best.pt"] and store.teacher["classes"] == list(SHAPES)

    alone = [load_classifier(p) for p in shape_teachers]
    transform = build_transform(CLASSIFY_IMGSZ, IMAGENET_MEAN, IMAGENET_STD, train=False)
    for model, meta in alone:  # both were trained at 24 px with ImageNet's normalisation
        assert meta["imgsz"] == CLASSIFY_IMGSZ and tuple(meta["mean"]) == pytest.approx(IMAGENET_MEAN)
    x = torch.stack([transform(read_image(source / k)) for k in store.keys])
    with torch.no_grad():
        expected = torch.cat([model(x) for model, _ in alone], dim=1)  # members side by side
    torch.testing.assert_close(store.lookup(store.keys), expected, rtol=1e-4, atol=1e-5)


TINY = "yd-embed-test-clip"
TINY_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_embedding_store_equals_live_clip(shapes_data, tmp_path):
    pytest.importorskip("open_clip")
    from yolodistill.classification.clip_teacher import load_clip

    config = tmp_path / f"{TINY}.json"
    config.write_text(json.dumps(TINY_CFG))
    torch.manual_seed(0)
    clip = load_clip(TINY, None, config=str(config))
    source = shapes_data / "train"
    out = embed_clip(source, tmp_path / "emb", clip, batch_size=5, workers=0, dtype="float32")
    store = TeacherStore.open(out, kind="embedding", dim=16, teacher=clip.identity)
    assert store.keys == tuple(list_images(source))

    x = torch.stack([clip.preprocess(read_image(source / k)) for k in store.keys])
    with torch.no_grad():
        expected = F.normalize(clip.model.encode_image(x).float(), dim=-1)
    rows = store.lookup(store.keys)
    torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(rows)))
