"""Feature recorder and adapters on randomly initialised YOLOv5 n/s/m models (CPU, 64 px)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from yolodistill.errors import UserError
from yolodistill.hooks import FeatureAdapter, FeatureRecorder, adapter_key, build_adapters, probe_feature_shapes

IMGSZ = 64
FPN = ["model.17", "model.20", "model.23"]  # the P3/P4/P5 outputs that feed Detect (model.24)
CHANNELS = {"n": [64, 128, 256], "s": [128, 256, 512], "m": [192, 384, 768]}
SIZES = [(8, 8), (4, 4), (2, 2)]  # 64 px at strides 8, 16, 32


def _build(size: str):
    import yolov5
    from yolov5.models.yolo import Model
    from yolov5.utils.general import LOGGER

    LOGGER.setLevel(logging.WARNING)  # Model() prints its layer table at INFO
    torch.manual_seed(0)
    return Model(str(Path(yolov5.__file__).parent / f"models/yolov5{size}.yaml"), ch=3, nc=3)


@pytest.fixture(scope="module")
def models():
    """yolov5 n, s and m with nc=3, built once for the module (m is ~21M parameters)."""
    return {size: _build(size) for size in "nsm"}


def _no_hooks(model) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


def test_recorder_captures_fpn_levels_with_expected_shapes(models):
    model = models["n"].train()
    with FeatureRecorder(model, FPN) as rec:
        model(torch.rand(2, 3, IMGSZ, IMGSZ))
        feats = rec.pop()
        assert list(feats) == FPN
        for name, c, hw in zip(FPN, CHANNELS["n"], SIZES):
            assert feats[name].shape == (2, c, *hw)
            assert feats[name].requires_grad  # the student keeps its graph for the distillation loss
        with pytest.raises(RuntimeError, match="model.17"):  # pop() emptied the store
            rec.pop()
    assert _no_hooks(model)


def test_detach_recorder_stores_graph_free_tensors(models):
    model = models["n"].train()
    with FeatureRecorder(model, FPN, detach=True) as rec:
        model(torch.rand(1, 3, IMGSZ, IMGSZ))
        assert not any(t.requires_grad for t in rec.pop().values())


@pytest.mark.parametrize("size", ["s", "m"])
def test_channel_counts_of_larger_models(models, size):
    shapes = probe_feature_shapes(models[size], FPN, IMGSZ)
    assert [tuple(shapes[n]) for n in FPN] == [(1, c, *hw) for c, hw in zip(CHANNELS[size], SIZES)]


def test_attach_is_idempotent_and_remove_empties_forward_hooks(models):
    model = models["n"]
    rec = FeatureRecorder(model, FPN + ["model.17"])  # a repeated layer gets one hook
    assert not rec.attached
    rec.attach().attach()
    assert rec.attached
    modules = dict(model.named_modules())
    assert [len(modules[n]._forward_hooks) for n in FPN] == [1, 1, 1]
    rec.remove()
    assert not rec.attached and _no_hooks(model)
    rec.remove()  # removing twice is harmless


def test_detached_context_removes_then_reattaches(models):
    model = models["n"].train()
    rec = FeatureRecorder(model, FPN).attach()
    with rec.detached():
        assert not rec.attached and _no_hooks(model)
        clone = copy.deepcopy(model)  # what ModelEMA and checkpoint saving do
    assert _no_hooks(clone)
    assert rec.attached and not _no_hooks(model)
    model(torch.rand(1, 3, IMGSZ, IMGSZ))
    assert set(rec.pop()) == set(FPN)
    rec.remove()
    with rec.detached():  # a detached recorder stays detached afterwards
        pass
    assert not rec.attached and _no_hooks(model)


def test_unknown_layer_is_a_user_error_naming_it_and_the_valid_range(models):
    with pytest.raises(UserError, match=r"model\.99.*model\.0\.\.model\.24"):
        FeatureRecorder(models["n"], ["model.17", "model.99"])
    assert _no_hooks(models["n"])


def test_detect_layer_output_is_rejected_at_forward_time(models):
    model = models["n"].train()
    with FeatureRecorder(model, ["model.24"]) as rec:
        with pytest.raises(UserError, match="'model.24'.*not a tensor"):
            model(torch.rand(1, 3, IMGSZ, IMGSZ))
        with pytest.raises(RuntimeError, match="model.24"):
            rec.pop()
    with pytest.raises(UserError, match="not a tensor"):  # the probe, i.e. the distiller's setup, fails early too
        probe_feature_shapes(model, ["model.24"], IMGSZ)
    assert _no_hooks(model) and model.training


@pytest.mark.parametrize("student,teacher", [("n", "s"), ("s", "m")])
def test_adapters_map_student_features_to_teacher_shapes(models, student, teacher):
    s_shapes = probe_feature_shapes(models[student], FPN, IMGSZ)
    t_shapes = probe_feature_shapes(models[teacher], FPN, IMGSZ)
    adapters = build_adapters(s_shapes, t_shapes, list(zip(FPN, FPN)))
    assert list(adapters) == ["model_17->model_17", "model_20->model_20", "model_23->model_23"]
    for name, cs, ct in zip(FPN, CHANNELS[student], CHANNELS[teacher]):
        adapter = adapters[adapter_key(name, name)]
        assert adapter(torch.rand(s_shapes[name])).shape == t_shapes[name]
        assert sum(p.numel() for p in adapter.parameters()) == cs * ct + ct  # 1x1 conv + bias


def test_equal_channels_give_a_parameter_free_identity(models):
    shapes = probe_feature_shapes(models["s"], FPN, IMGSZ)
    adapters = build_adapters(shapes, shapes, list(zip(FPN, FPN)))
    assert sum(p.numel() for p in adapters.parameters()) == 0
    x = torch.rand(shapes["model.20"])
    assert torch.equal(adapters[adapter_key("model.20", "model.20")](x), x)


def test_spatial_mismatch_is_interpolated_to_the_teacher_size(models):
    s_shapes = probe_feature_shapes(models["n"], ["model.17"], IMGSZ)  # (1, 64, 8, 8), stride 8
    t_shapes = probe_feature_shapes(models["s"], ["model.20"], IMGSZ)  # (1, 256, 4, 4), stride 16
    adapter = build_adapters(s_shapes, t_shapes, [("model.17", "model.20")])[adapter_key("model.17", "model.20")]
    assert adapter.spatial_scale == (0.5, 0.5)
    assert adapter(torch.rand(2, 64, 8, 8)).shape == (2, 256, 4, 4)
    assert adapter(torch.rand(2, 64, 16, 12)).shape == (2, 256, 8, 6)  # the stride ratio holds at other sizes
    # Hand-computed: bilinear halving (align_corners=False) of a 1x4 ramp averages neighbour pairs.
    same_c = FeatureAdapter(1, 1, spatial_scale=(1.0, 0.5))
    ramp = torch.tensor([0.0, 2.0, 4.0, 6.0]).view(1, 1, 1, 4)
    assert torch.allclose(same_c(ramp), torch.tensor([1.0, 5.0]).view(1, 1, 1, 2))
    assert same_c(ramp, size=(1, 4)).shape == (1, 1, 1, 4)  # an explicit teacher size wins


def test_gradients_reach_adapter_weights_not_the_teacher(models):
    student, teacher = models["n"].train(), models["s"].eval()
    s_shapes = probe_feature_shapes(student, ["model.20"], IMGSZ)
    t_shapes = probe_feature_shapes(teacher, ["model.20"], IMGSZ)
    adapter = build_adapters(s_shapes, t_shapes, [("model.20", "model.20")])[adapter_key("model.20", "model.20")]
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    with FeatureRecorder(student, ["model.20"]) as s_rec, FeatureRecorder(teacher, ["model.20"], detach=True) as t_rec:
        student(imgs)
        teacher(imgs)
        s_feat, t_feat = s_rec.pop()["model.20"], t_rec.pop()["model.20"]
    F.mse_loss(adapter(s_feat), t_feat).backward()
    assert adapter.proj.weight.grad is not None and adapter.proj.weight.grad.abs().sum() > 0
    assert adapter.proj.bias.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad(set_to_none=True)


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_probe_keeps_bn_stats_and_training_flags(models, mode):
    model = models["n"]
    model.train(mode != "eval")
    if mode == "mixed":
        model.model[0].bn.eval()  # e.g. a frozen BN kept in eval by the caller
    flags = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    probe_feature_shapes(model, FPN, IMGSZ, device="cpu")
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        if k in stats:
            assert torch.equal(v, stats[k]), k
    assert _no_hooks(model)
    model.train()
