"""The OpenCLIP teacher and its heads, on a tiny random OpenCLIP model built from a config written per test module."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from yolodistill.classification.clip_teacher import (  # after the importorskip
    LinearHead, fit_linear_probe, load_clip, load_head, read_prompts, save_head, text_head)
from yolodistill.errors import UserError

TINY = "yd-tiny-clip"
TINY_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _write_config(directory, name=TINY, cfg=TINY_CFG):
    path = directory / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return _write_config(tmp_path_factory.mktemp("clip_cfg"))


@pytest.fixture(scope="module")
def teacher(config):
    torch.manual_seed(0)
    return load_clip(TINY, None, config=str(config))


def _clusters(n_per_class=40, num_classes=3, dim=32, seed=0):
    """Well-separated Gaussian clusters around random unit centres: (N, D) embeddings, (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.05 * torch.randn(len(labels), dim, generator=g), labels


def test_teacher_is_frozen_and_embeddings_are_unit_norm(teacher):
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.embed_dim == 32 and teacher.identity["model"] == TINY and teacher.identity["weights"] is None
    assert teacher.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial temperature
    images = torch.randn(4, 3, 32, 32)
    img = teacher.encode_images(images)
    txt = teacher.encode_text(["a cat", "a dog", "a bird"])
    assert img.shape == (4, 32) and txt.shape == (3, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not img.requires_grad and not txt.requires_grad
    from PIL import Image
    assert teacher.preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_text_head_is_clip_zero_shot(teacher):
    classes, prompts = ["cat", "dog", "bird"], ["a photo of a cat", "a photo of a dog", "a photo of a bird"]
    head = text_head(teacher, prompts, classes)
    assert head.kind == "text" and head.classes == classes and float(head.scale) == pytest.approx(teacher.logit_scale)
    images = torch.randn(5, 3, 32, 32)
    img, txt = teacher.encode_images(images), teacher.encode_text(prompts)
    logits = head(img)
    assert logits.shape == (5, 3)
    assert torch.allclose(logits, teacher.logit_scale * img @ txt.T, atol=1e-4)
    # the head normalises: a student embedding at another scale gives the same logits
    assert torch.allclose(head(7.0 * img), logits, atol=1e-4)
    assert torch.allclose(logits.softmax(-1).sum(-1), torch.ones(5), atol=1e-6)


def test_linear_probe_separates_clusters_deterministically():
    x, y = _clusters()
    head = fit_linear_probe(x, y, ["a", "b", "c"])
    probs = head(x).softmax(-1)
    assert probs.shape == (120, 3) and torch.allclose(probs.sum(-1), torch.ones(120), atol=1e-6)
    assert (probs.argmax(-1) == y).float().mean().item() == 1.0
    assert float(head.scale) == 1.0 and head.kind == "probe"
    again = fit_linear_probe(x, y, ["a", "b", "c"])
    assert torch.equal(again.weight, head.weight) and torch.equal(again.bias, head.bias)
    with torch.inference_mode():  # embeddings cached under inference mode still fit
        cached = x.clone()
    assert torch.equal(fit_linear_probe(cached, y, ["a", "b", "c"]).weight, head.weight)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_probe(x, y + 1, ["a", "b", "c"])


def test_head_round_trip(tmp_path, teacher):
    x, y = _clusters()
    for head in (fit_linear_probe(x, y, ["a", "b", "c"]), text_head(teacher, ["x", "y", "z"], ["a", "b", "c"])):
        path = tmp_path / f"{head.kind}.pt"
        save_head(head, path, teacher=teacher.identity)
        loaded, identity = load_head(path)
        assert isinstance(loaded, LinearHead) and loaded.kind == head.kind and loaded.classes == head.classes
        assert identity == teacher.identity
        assert torch.equal(loaded(x), head(x))
        assert set(torch.load(path, weights_only=True)) == {"kind", "classes", "weight", "bias", "scale", "teacher",
                                                            "embed_dim"}
    with pytest.raises(UserError, match="not found"):
        load_head(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable head file"):
        load_head(tmp_path / "junk.pt")


def test_read_prompts(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# one line per class\n\na photo of a cat\n  a photo of a dog  \n")
    assert read_prompts(f) == (["a photo of a cat", "a photo of a dog"], ["a photo of a cat", "a photo of a dog"])
    assert read_prompts(f, ["cat", "dog"]) == (["cat", "dog"], ["a photo of a cat", "a photo of a dog"])
    with pytest.raises(UserError, match="has 2 classes, the labeled data has 3"):
        read_prompts(f, ["bird", "cat", "dog"])

    f.write_text("dog: a photo of a dog\nhot dog: a photo of a hot dog\ncat: a photo of a cat: small\n")
    assert read_prompts(f) == (["dog", "hot dog", "cat"],
                               ["a photo of a dog", "a photo of a hot dog", "a photo of a cat: small"])
    assert read_prompts(f, ["cat", "dog", "hot dog"]) == (
        ["cat", "dog", "hot dog"], ["a photo of a cat: small", "a photo of a dog", "a photo of a hot dog"])
    with pytest.raises(UserError, match=r"lacks \(hot dog\) and misses \(bird\)"):
        read_prompts(f, ["bird", "cat", "dog"])

    f.write_text("cat: a cat\na dog\n")
    with pytest.raises(UserError, match="mixes"):
        read_prompts(f)
    f.write_text("# only a comment\n\n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompts(f)
    with pytest.raises(UserError, match="prompts file not found"):
        read_prompts(tmp_path / "missing.txt")


def test_pretrained_must_be_a_local_file(config, tmp_path):
    for bad in ("openai", "laion2b_s34b_b79k", str(tmp_path / "missing.safetensors")):
        with pytest.raises(UserError, match="local files only") as info:
            load_clip("ViT-B-32", bad)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="hub tag"):
        load_clip("ViT-B-32", "openai")
    with pytest.raises(UserError, match="schema prefixes"):
        load_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)


def test_unknown_model_and_bad_configs(tmp_path):
    with pytest.raises(UserError, match="did you mean .*ViT-B-32"):
        load_clip("ViT-B-23", None)
    with pytest.raises(UserError, match="config not found"):
        load_clip("nope", None, config=str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="defines model 'yd-other'"):
        load_clip("yd-mismatch", None, config=str(_write_config(tmp_path, "yd-other")))
    with pytest.raises(UserError, match="lacks text_cfg"):
        load_clip("yd-half", None, config=str(_write_config(tmp_path, "yd-half", {"embed_dim": 8, "vision_cfg": {}})))
    (tmp_path / "yd-broken.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read OpenCLIP model config"):
        load_clip("yd-broken", None, config=str(tmp_path / "yd-broken.json"))


def test_hf_tokenizer_fails_fast_offline(tmp_path):
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["text_cfg"]["hf_tokenizer_name"] = "yd-test/no-such-tokenizer"
    with pytest.raises(UserError, match="cannot load its tokenizer .* offline"):
        load_clip("yd-hf-tok", None, config=str(_write_config(tmp_path, "yd-hf-tok", cfg)))


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_weights_load_from_local_file(config, teacher, tmp_path, suffix):
    path = tmp_path / f"open_clip_model.{suffix}"
    state = {k: v.clone().contiguous() for k, v in teacher.model.state_dict().items()}
    if suffix == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)  # a different random init, which the file must overwrite
    loaded = load_clip(TINY, str(path), config=str(config))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded.identity == {"type": "open_clip", "model": TINY, "weights": path.name, "bytes": path.stat().st_size}
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.encode_images(images), teacher.encode_images(images), atol=1e-6)

    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot build OpenCLIP model"):
        load_clip(TINY, str(tmp_path / "bad.pt"), config=str(config))


def test_offline_guard_blocks_the_hub_even_after_import():
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import get_session

    from yolodistill.classification.clip_teacher import _offline

    before = hub.constants.HF_HUB_OFFLINE
    get_session()  # a session cached before the guard must not carry a request out
    with _offline():
        with pytest.raises(hub.errors.OfflineModeIsEnabled):
            get_session().get("https://huggingface.co/api/models/yd-test/none")
    assert hub.constants.HF_HUB_OFFLINE == before
