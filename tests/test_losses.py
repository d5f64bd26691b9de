"""Distillation losses against hand-computed values, and the feature-loss registry with its plugins."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
from torch import nn

from yolodistill.errors import UserError
from yolodistill.losses import (
    ENTRY_POINT_GROUP,
    FEATURE_LOSSES,
    available_feature_losses,
    build_feature_loss,
    OUTPUT_LOSSES,
    binary_kl,
    output_distillation_loss,
    register_feature_loss,
)
from yolodistill.losses import registry

pytestmark = pytest.mark.float_sensitive  # hand-computed losses within float32 rounding

# KL(p_T || p_S) for p_T = softmax([0, ln 3]) = [1/4, 3/4] and p_S = softmax([0, 0]) = [1/2, 1/2]
KL_QUARTER_VS_HALF = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # = 0.130812...


def feat(values, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


# ---------------------------------------------------------------------------- feature losses
@pytest.mark.parametrize("name", ["mse", "cwd", "pkd"])
def test_feature_loss_is_zero_when_student_equals_teacher(name):
    x = torch.randn(2, 3, 4, 5)
    assert build_feature_loss(name)(x.clone(), x.clone()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name", ["mse", "cwd", "pkd"])
def test_feature_loss_does_not_grow_with_batch_size(name):
    s, t = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5)
    loss = build_feature_loss(name)
    assert loss(s.repeat(4, 1, 1, 1), t.repeat(4, 1, 1, 1)).item() == pytest.approx(loss(s, t).item(), rel=1e-5)


def test_pkd_by_hand_is_one_minus_correlation():
    s = feat([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))
    # perfectly anti-correlated: z(s) = -z(t), mean((2 z)^2) / 2 = 2 * mean(z^2) = 2
    assert build_feature_loss("pkd")(s, feat([4.0, 3.0, 2.0, 1.0], (1, 1, 2, 2))).item() == pytest.approx(2.0, rel=1e-4)
    # an affine copy (scale 3, shift 5) is perfectly correlated: zero, whatever the scale gap
    assert build_feature_loss("pkd")(s, 3 * s + 5).item() == pytest.approx(0.0, abs=1e-6)


def test_mse_by_hand():
    s = feat([1.0, 2.0, 3.0, 4.0], (1, 1, 2, 2))
    t = feat([1.0, 0.0, 3.0, 6.0], (1, 1, 2, 2))
    # differences 0, 2, 0, -2 -> squares 0, 4, 0, 4 -> mean over 4 elements = 8 / 4
    assert build_feature_loss("mse")(s, t).item() == pytest.approx(2.0)


def test_cwd_by_hand_one_channel():
    s = feat([0.0, 0.0], (1, 1, 1, 2))  # p_S = [1/2, 1/2]
    t = feat([0.0, math.log(3.0)], (1, 1, 1, 2))  # p_T = [1/4, 3/4]
    # tau = 1, B * C = 1: loss = 1/4 ln(1/2) + 3/4 ln(3/2)
    assert build_feature_loss("cwd")(s, t).item() == pytest.approx(KL_QUARTER_VS_HALF, rel=1e-5)


def test_cwd_by_hand_averages_over_channels():
    # channel 0 as in the one-channel case; channel 1 identical in both, so its KL is 0
    s = feat([0.0, 0.0, 5.0, 1.0], (1, 2, 1, 2))
    t = feat([0.0, math.log(3.0), 5.0, 1.0], (1, 2, 1, 2))
    # sum over channels = KL + 0, divided by B * C = 2
    assert build_feature_loss("cwd")(s, t).item() == pytest.approx(KL_QUARTER_VS_HALF / 2, rel=1e-5)


def test_cwd_tau_squared_factor():
    s = feat([0.0, 0.0], (1, 1, 1, 2))
    t = feat([0.0, 2 * math.log(3.0)], (1, 1, 1, 2))
    # divided by tau = 2 these are the one-channel logits again: same softmaxes, so the loss is tau^2 = 4 times that KL
    assert build_feature_loss("cwd", tau=2.0)(s, t).item() == pytest.approx(4 * KL_QUARTER_VS_HALF, rel=1e-5)


def test_cwd_fp16_inputs_give_finite_float32():
    s, t = torch.randn(1, 2, 3, 3).half() * 50, torch.randn(1, 2, 3, 3).half() * 50
    out = build_feature_loss("cwd", tau=1.0)(s, t)
    assert out.dtype == torch.float32 and out.dim() == 0 and torch.isfinite(out)


def test_cwd_rejects_nonpositive_tau():
    with pytest.raises(UserError, match="tau"):
        build_feature_loss("cwd", tau=0.0)


@pytest.mark.parametrize("name", ["mse", "cwd", "pkd"])
def test_feature_loss_gradients_reach_student_only(name):
    s = torch.randn(1, 2, 3, 3, requires_grad=True)
    t = torch.randn(1, 2, 3, 3, requires_grad=True)
    build_feature_loss(name)(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", ["mse", "cwd", "pkd"])
def test_feature_loss_rejects_shape_mismatch(name):
    with pytest.raises(ValueError, match="does not match"):
        build_feature_loss(name)(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3))


# ---------------------------------------------------------------------------- output loss
def head(box, obj, cls) -> torch.Tensor:
    """One cell of a raw head output, shape (1, 1, 1, 1, 5 + nc)."""
    return torch.tensor([*box, obj, *cls], dtype=torch.float32).reshape(1, 1, 1, 1, -1)


def test_output_loss_is_zero_when_student_equals_teacher():
    raw = [torch.randn(2, 3, 4, 4, 7), torch.randn(2, 3, 2, 2, 7)]
    terms = output_distillation_loss([r.clone() for r in raw], raw, nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)
    assert [x.item() for x in terms] == [0.0, 0.0, 0.0]


def test_output_loss_by_hand():
    # teacher objectness logit 0 -> weight sigmoid(0) = 1/2
    s = head(box=[1.0, 2.0, 0.0, 0.0], obj=2.0, cls=[1.0, -3.0])
    t = head(box=[0.0, 0.0, 0.0, 0.0], obj=0.0, cls=[0.0, 0.0])
    lbox, lobj, lcls = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)
    assert lbox.item() == pytest.approx((1 + 4 + 0 + 0) * 0.5 / 4)  # 0.625
    assert lobj.item() == pytest.approx(4 * 0.5)  # 2.0
    assert lcls.item() == pytest.approx((1 + 9) * 0.5 / 2)  # 2.5
    assert lbox.dim() == lobj.dim() == lcls.dim() == 0


def test_output_loss_sums_levels_and_weights_by_teacher_objectness():
    s0 = head(box=[1.0, 2.0, 0.0, 0.0], obj=2.0, cls=[1.0, -3.0])
    t0 = head(box=[0.0, 0.0, 0.0, 0.0], obj=0.0, cls=[0.0, 0.0])
    # level 1: teacher objectness logit ln 3 -> weight 3/4; only box x differs, by 2
    t1 = head(box=[0.0, 0.0, 0.0, 0.0], obj=math.log(3.0), cls=[0.0, 0.0])
    s1 = head(box=[2.0, 0.0, 0.0, 0.0], obj=math.log(3.0), cls=[0.0, 0.0])
    lbox, lobj, lcls = output_distillation_loss([s0, s1], [t0, t1], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)
    assert lbox.item() == pytest.approx(0.625 + 4 * 0.75 / 4)  # 1.375
    assert lobj.item() == pytest.approx(2.0 + 0.0)
    assert lcls.item() == pytest.approx(2.5 + 0.0)


def test_output_loss_means_over_cells_not_sums():
    # two cells, one of them identical: the level's mean halves compared with the single cell
    s = torch.cat([head([1.0, 2.0, 0.0, 0.0], 2.0, [1.0, -3.0]), head([0.0] * 4, 0.0, [0.0, 0.0])], dim=3)
    t = torch.zeros_like(s)
    lbox, lobj, lcls = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)
    assert (lbox.item(), lobj.item(), lcls.item()) == pytest.approx((0.625 / 2, 2.0 / 2, 2.5 / 2))


def test_output_loss_gains_scale_each_term():
    s = head(box=[1.0, 2.0, 0.0, 0.0], obj=2.0, cls=[1.0, -3.0])
    t = head(box=[0.0, 0.0, 0.0, 0.0], obj=0.0, cls=[0.0, 0.0])
    lbox, lobj, lcls = output_distillation_loss([s], [t], nc=2, box_gain=2.0, obj_gain=3.0, cls_gain=4.0)
    assert (lbox.item(), lobj.item(), lcls.item()) == pytest.approx((2 * 0.625, 3 * 2.0, 4 * 2.5))


def test_output_loss_single_class_has_no_class_term():
    s = head(box=[0.0] * 4, obj=0.0, cls=[5.0])
    t = head(box=[0.0] * 4, obj=3.0, cls=[-5.0])
    lbox, lobj, lcls = output_distillation_loss([s], [t], nc=1, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)
    assert lcls.item() == 0.0 and lcls.dim() == 0
    assert lobj.item() > 0


def test_output_loss_gradients_reach_student_only():
    s = torch.randn(1, 3, 2, 2, 7, requires_grad=True)
    t = torch.randn(1, 3, 2, 2, 7, requires_grad=True)
    sum(output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_output_loss_fp16_teacher_gives_float32():
    s = torch.randn(1, 3, 2, 2, 7)
    terms = output_distillation_loss([s], [s.half()], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)
    assert all(x.dtype == torch.float32 for x in terms)


def test_output_loss_rejects_level_count_mismatch():
    raw = torch.zeros(1, 3, 2, 2, 7)
    with pytest.raises(ValueError, match="2 detection levels.*teacher has 1"):
        output_distillation_loss([raw, raw], [raw], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)


def test_output_loss_rejects_last_dim_mismatch():
    with pytest.raises(ValueError, match="level 0"):
        output_distillation_loss([torch.zeros(1, 3, 2, 2, 7)], [torch.zeros(1, 3, 2, 2, 8)], nc=2,
                                 box_gain=1.0, obj_gain=1.0, cls_gain=1.0)


def test_output_loss_rejects_wrong_nc():
    raw = torch.zeros(1, 3, 2, 2, 7)
    with pytest.raises(ValueError, match="5 \\+ nc"):
        output_distillation_loss([raw], [raw], nc=3, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)


# ---------------------------------------------------------------------------- registry
@pytest.fixture
def clean_registry(monkeypatch):
    """Registry as the package left it, restored afterwards; plugins not loaded yet."""
    saved = dict(FEATURE_LOSSES)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    FEATURE_LOSSES.clear()
    FEATURE_LOSSES.update(saved)


class FakeEntryPoint:
    def __init__(self, name, load):
        self.name, self.value, self._load = name, f"fake_pkg.losses:{name}", load

    def load(self):
        return self._load()


def fake_entry_points(monkeypatch, *eps):
    """Patch importlib.metadata.entry_points to return `eps` for our group; returns the call count list."""
    calls = []

    def entry_points(group=None):
        calls.append(group)
        return list(eps) if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return calls


class L1FeatureLoss(nn.Module):
    """Mean absolute error over (B, C, H, W), scaled: a plugin-sized loss for the tests."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, s_feat, t_feat):
        return self.scale * (s_feat - t_feat.detach()).abs().mean()


def test_builtins_are_listed(clean_registry, monkeypatch):
    fake_entry_points(monkeypatch)
    assert {"mse", "cwd", "pkd"} <= set(available_feature_losses())


def test_register_and_build_new_loss(clean_registry, monkeypatch):
    fake_entry_points(monkeypatch)
    register_feature_loss("l1_test")(L1FeatureLoss)
    loss = build_feature_loss("l1_test", scale=3.0)
    s, t = feat([1.0, -1.0], (1, 1, 1, 2)), feat([0.0, 0.0], (1, 1, 1, 2))
    assert loss(s, t).item() == pytest.approx(3.0 * (1 + 1) / 2)
    assert "l1_test" in available_feature_losses()


def test_duplicate_registration_raises(clean_registry):
    with pytest.raises(ValueError, match="mse"):
        register_feature_loss("mse")(L1FeatureLoss)
    register_feature_loss("l1_test")(L1FeatureLoss)
    with pytest.raises(ValueError, match="l1_test"):
        register_feature_loss("l1_test")(L1FeatureLoss)


def test_unknown_name_is_a_one_line_user_error_listing_names(clean_registry, monkeypatch):
    fake_entry_points(monkeypatch)
    with pytest.raises(UserError) as err:
        build_feature_loss("nope")
    msg = str(err.value)
    assert "'nope'" in msg and "mse" in msg and "cwd" in msg and "\n" not in msg


def test_bad_kwarg_is_a_user_error(clean_registry, monkeypatch):
    fake_entry_points(monkeypatch)
    with pytest.raises(UserError, match="taux"):
        build_feature_loss("cwd", taux=2.0)


def test_entry_point_plugin_is_buildable_and_loaded_once(clean_registry, monkeypatch):
    calls = fake_entry_points(monkeypatch, FakeEntryPoint("l1_plugin", lambda: L1FeatureLoss))
    register_feature_loss("l1_other")(L1FeatureLoss)
    assert calls == []  # nothing is loaded until someone asks for a loss
    assert isinstance(build_feature_loss("l1_plugin"), L1FeatureLoss)
    assert "l1_plugin" in available_feature_losses()
    build_feature_loss("mse")
    assert calls == [ENTRY_POINT_GROUP]


def test_broken_plugin_warns_and_the_rest_still_work(clean_registry, monkeypatch):
    def broken():
        raise ImportError("No module named 'fake_pkg'")

    fake_entry_points(monkeypatch, FakeEntryPoint("broken_plugin", broken),
                      FakeEntryPoint("l1_plugin", lambda: L1FeatureLoss))
    with pytest.warns(UserWarning, match="broken_plugin.*fake_pkg"):
        names = available_feature_losses()
    assert "broken_plugin" not in names and {"mse", "cwd", "l1_plugin"} <= set(names)
    assert isinstance(build_feature_loss("l1_plugin"), L1FeatureLoss)


def test_plugin_that_is_not_a_module_class_warns(clean_registry, monkeypatch):
    fake_entry_points(monkeypatch, FakeEntryPoint("not_a_loss", lambda: len))
    with pytest.warns(UserWarning, match="not_a_loss.*not an nn.Module"):
        assert "not_a_loss" not in available_feature_losses()


def test_plugin_cannot_replace_a_builtin(clean_registry, monkeypatch):
    builtin = FEATURE_LOSSES["mse"]
    fake_entry_points(monkeypatch, FakeEntryPoint("mse", lambda: L1FeatureLoss))
    with pytest.warns(UserWarning, match="'mse'.*clashes"):
        available_feature_losses()
    assert FEATURE_LOSSES["mse"] is builtin


# ---------------------------------------------------------------------------- output loss `kl`
# float32 tolerance: each BCE is at most ~1 here and rounds to a few ulps (1.2e-7 each); KL is the difference
# of two of them, so a few ulps of 1.0 bound its error
KL_ABS = 1e-6
CIOU_KINDS = ("kl", "mse_ciou")
CIOU_EPS = 1e-7  # torchvision's complete_box_iou_loss adds this to the union and the enclosing diagonal


def kl_loss(s, t, nc=2, anchors=None):
    anchors = anchors if anchors is not None else [torch.ones(r.shape[1], 2) for r in s]
    return output_distillation_loss(s, t, nc=nc, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind="kl",
                                    anchors=anchors)


def test_kl_output_loss_is_zero_when_student_equals_teacher():
    raw = [torch.randn(2, 3, 4, 4, 7), torch.randn(2, 3, 2, 2, 7)]
    lbox, lobj, lcls = kl_loss([r.clone() for r in raw], raw)
    assert lobj.item() == 0.0 and lcls.item() == 0.0
    # identical boxes: IoU = area / (area + eps), so 1 - IoU <= eps / area per cell, plus a few float32 ulps of 1
    # from the division and subtraction; the smallest box (wh logits from randn, decoded as (2 sigmoid)^2) bounds
    # the weighted mean of every level (weights <= 1, divided by a mass >= 1), summed over 2 levels
    smallest = min(((r[..., 2:4].sigmoid() * 2) ** 2).prod(-1).min().item() for r in raw)
    assert 0.0 <= lbox.item() <= 2 * (2 * CIOU_EPS / smallest + 4 * torch.finfo(torch.float32).eps)


def test_kl_output_loss_by_hand():
    # one cell, anchor 1 x 1. Teacher: box logits 0 -> centre (0.5, 0.5), size 1 x 1; objectness 3/4 (the
    # weight); classes 3/4 and 1/4. Student: x logit ln 3 -> centre x = 2 * 3/4 - 0.5 = 1.0, the same size;
    # probabilities 1/2 elsewhere.
    s = head(box=[math.log(3.0), 0.0, 0.0, 0.0], obj=0.0, cls=[0.0, 0.0])
    t = head(box=[0.0, 0.0, 0.0, 0.0], obj=math.log(3.0), cls=[math.log(3.0), -math.log(3.0)])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(3/4 || 1/2), also KL(1/4 || 1/2)
    # boxes [0, 0, 1, 1] and [0.5, 0, 1.5, 1]: IoU 1/3; centres 0.5 apart in an enclosing box 1.5 x 1; same aspect
    one_minus_ciou = 1 - 1 / 3 + 0.5 ** 2 / (1.5 ** 2 + 1 ** 2)
    lbox, lobj, lcls = kl_loss([s], [t])
    # the teacher sees 3/4 of an object: less than one, so the weighted sum is divided by 1
    assert lbox.item() == pytest.approx(0.75 * one_minus_ciou, abs=KL_ABS)
    assert lobj.item() == pytest.approx(kl, abs=KL_ABS)  # objectness unweighted
    assert lcls.item() == pytest.approx(0.75 * kl, abs=KL_ABS)  # classes weighted by the teacher's objectness


def test_kl_boxes_and_classes_are_averaged_over_the_teachers_objects_not_over_every_cell():
    # the same object cell alone and among 63 background cells: its box and class loss is the same, as
    # yolov5's task loss averages them over the cells that hold objects; mse's mean over every cell shrinks it
    def grid(side):
        t = torch.zeros(1, 1, side, side, 7)
        t[..., 4] = -30.0  # background: weight sigmoid(-30) ~ 1e-13
        t[0, 0, 0, 0, 4] = 30.0  # one object, weight 1
        s = t.clone()
        s[0, 0, 0, 0, 0] = math.log(3.0)  # the student's box shifted, as in the by-hand test
        s[0, 0, 0, 0, 5] = 2.0  # and a class logit off
        return s, t

    (s1, t1), (s8, t8) = grid(1), grid(8)
    for part in (0, 2):  # box, classes
        assert kl_loss([s8], [t8])[part].item() == pytest.approx(kl_loss([s1], [t1])[part].item(), rel=1e-5)
    mse = [output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)[0].item()
           for s, t in ((s1, t1), (s8, t8))]
    assert mse[1] == pytest.approx(mse[0] / 64, rel=1e-5)


def test_kl_output_loss_needs_the_anchors():
    raw = [torch.zeros(1, 3, 2, 2, 7)]
    with pytest.raises(ValueError, match="needs the anchors"):
        output_distillation_loss(raw, raw, nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind="kl")


def test_kl_output_loss_teaches_background_where_mse_is_silent():
    # the teacher is sure a cell is background (logit -10); the student thinks it is an object (logit 2)
    s = head(box=[0.0] * 4, obj=2.0, cls=[0.0, 0.0])
    t = head(box=[0.0] * 4, obj=-10.0, cls=[0.0, 0.0])
    mse_obj = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0)[1].item()
    kl_obj = kl_loss([s], [t])[1].item()
    assert mse_obj == pytest.approx(144 * torch.sigmoid(torch.tensor(-10.0)).item())  # ~0.0065
    assert kl_obj > 2.0  # ~ -ln(1 - sigmoid(2)) = 2.13


def test_kl_output_loss_gradient_is_the_difference_of_probabilities():
    s = torch.randn(1, 3, 2, 2, 7, requires_grad=True)
    t = torch.randn(1, 3, 2, 2, 7)
    kl_loss([s], [t])[1].backward()  # objectness: d/ds mean KL = (sigmoid(s) - sigmoid(t)) / cells
    expected = (s.detach()[..., 4].sigmoid() - t[..., 4].sigmoid()) / s[..., 4].numel()
    assert torch.allclose(s.grad[..., 4], expected, rtol=0, atol=KL_ABS / s[..., 4].numel())
    assert s.grad[..., :4].abs().sum() == 0  # the box part was not in this term


def test_kl_box_gradient_brings_the_students_box_onto_the_teachers():
    t = head(box=[0.0, 0.0, 0.0, 0.0], obj=5.0, cls=[0.0, 0.0])
    s = head(box=[1.0, -1.0, 0.5, -0.5], obj=5.0, cls=[0.0, 0.0]).requires_grad_(True)
    # a decaying step, as in training: 1 - IoU has a kink where the sizes match (its gradient does not vanish
    # there), so a fixed step circles the optimum
    opt = torch.optim.SGD([s], lr=0.5)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, 0.98)
    losses = []
    for _ in range(400):
        opt.zero_grad()
        lbox = kl_loss([s], [t])[0]
        lbox.backward()
        opt.step()
        decay.step()
        losses.append(lbox.item())
    assert losses[0] > 0.5 and losses[-1] < 1e-3 * losses[0]
    # the box logits, not only the loss, end where the teacher's are (0)
    assert s.detach()[..., :4].abs().max() < 0.05


def test_mse_ciou_is_mse_with_kls_boxes():
    # the cells of the by-hand tests: kl's box part, mse's objectness and class parts
    s = head(box=[math.log(3.0), 0.0, 0.0, 0.0], obj=2.0, cls=[1.0, -3.0])
    t = head(box=[0.0, 0.0, 0.0, 0.0], obj=math.log(3.0), cls=[math.log(3.0), -math.log(3.0)])
    kw = dict(nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, anchors=[torch.ones(1, 2)])
    both = output_distillation_loss([s], [t], kind="mse_ciou", **kw)
    mse = output_distillation_loss([s], [t], kind="mse", **kw)
    kl = output_distillation_loss([s], [t], kind="kl", **kw)
    assert both[0].item() == kl[0].item() and both[1:] == mse[1:]
    assert both[0].item() == pytest.approx(0.75 * (1 - 1 / 3 + 0.5 ** 2 / (1.5 ** 2 + 1 ** 2)), abs=KL_ABS)
    with pytest.raises(ValueError, match="mse_ciou compares decoded boxes"):
        output_distillation_loss([s], [t], kind="mse_ciou", **{**kw, "anchors": None})


def test_ciou_boxes_skip_the_cells_the_teacher_calls_background():
    # three cells, the student's box off in each: an object (weight 3/4), a cell just above the cut and one just
    # below it. Only the first two count; the mass (3/4 + a little, clamped to 1) is that of every cell.
    from yolodistill.losses.output import BOX_MIN_OBJECTNESS

    def logit(p):
        return math.log(p / (1 - p))

    above, below = 1.5 * BOX_MIN_OBJECTNESS, 0.5 * BOX_MIN_OBJECTNESS
    t = torch.cat([head(box=[0.0] * 4, obj=logit(w), cls=[0.0, 0.0]) for w in (0.75, above, below)], dim=3)
    s = torch.cat([head(box=[math.log(3.0), 0.0, 0.0, 0.0], obj=0.0, cls=[0.0, 0.0])] * 3, dim=3)
    one_minus_ciou = 1 - 1 / 3 + 0.5 ** 2 / (1.5 ** 2 + 1 ** 2)  # the by-hand test's pair of boxes
    for kind in CIOU_KINDS:
        lbox = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind=kind,
                                        anchors=[torch.ones(1, 2)])[0]
        # the weights pass through float32 logits and back: a few ulps of each, relative
        assert lbox.item() == pytest.approx((0.75 + above) * one_minus_ciou, rel=1e-5), kind


@pytest.mark.parametrize("kind", CIOU_KINDS)
def test_ciou_boxes_are_zero_where_the_teacher_sees_no_object(kind):
    s = torch.randn(1, 3, 2, 2, 7, requires_grad=True)
    t = torch.randn(1, 3, 2, 2, 7)
    t[..., 4] = -20.0  # objectness 2e-9 on every cell: below the cut everywhere
    lbox = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind=kind,
                                    anchors=[torch.ones(3, 2)])[0]
    lbox.backward()
    assert lbox.item() == 0.0 and (s.grad == 0).all()


def test_ciou_boxes_over_cells_the_teacher_sees_match_every_cell():
    # teacher objectness logits from randn: every cell above the cut, so the term is CIoU on every cell, written
    # out here over the whole grid
    from yolodistill.losses.output import BOX_MIN_OBJECTNESS, ciou_loss, decode_boxes

    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, 7), torch.randn(2, 3, 4, 4, 7)
    anchors = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    w = t[..., 4].sigmoid()
    assert (w >= BOX_MIN_OBJECTNESS).all()
    every = ciou_loss(decode_boxes(s, anchors).reshape(-1, 4), decode_boxes(t, anchors).reshape(-1, 4))
    expected = (every * w.reshape(-1)).sum() / w.sum().clamp_min(1.0)
    lbox = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind="mse_ciou",
                                    anchors=[anchors])[0]
    # the same products summed, perhaps in another order: float32 rounding of a sum of 96 positive terms
    assert lbox.item() == pytest.approx(expected.item(), rel=96 * torch.finfo(torch.float32).eps)


def test_ciou_loss_is_torchvisions_on_ordinary_boxes():
    from torchvision.ops import complete_box_iou_loss
    from yolodistill.losses.output import ciou_loss

    torch.manual_seed(0)
    centre, size = torch.rand(2, 1000, 2) * 2, torch.rand(2, 1000, 2) * 1.5 + 0.5  # sides in [0.5, 2]
    a, b = (torch.cat((c - s / 2, c + s / 2), -1) for c, s in zip(centre, size))
    # the two differ only by eps = 1e-7 added to the heights in the aspect term: |d atan(w / h)| <= eps w / h^2
    # <= 8e-7 here, so v = 4 / pi^2 (difference of atans, |.| < pi)^2 moves by at most 4 / pi^2 * 2 pi * 8e-7
    # ~ 2e-6, alpha v by twice that; plus float32 rounding of a sum of terms < 4 (a few 1e-7)
    assert torch.allclose(ciou_loss(a, b), complete_box_iou_loss(a, b, reduction="none"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", CIOU_KINDS)
def test_ciou_boxes_give_finite_gradients_for_a_box_of_zero_height(kind):
    # the student's height logit so low that the decoded height rounds to 0 beside the box's position, width
    # not: torchvision's w / h is inf there, its atan finite, and its gradient NaN
    t = head(box=[0.0, 0.0, 0.0, 0.0], obj=5.0, cls=[0.0, 0.0])
    s = head(box=[0.0, 0.0, 0.0, -30.0], obj=5.0, cls=[0.0, 0.0]).requires_grad_(True)
    lbox = output_distillation_loss([s], [t], nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind=kind,
                                    anchors=[torch.ones(1, 2)])[0]
    lbox.backward()
    assert torch.isfinite(lbox) and torch.isfinite(s.grad).all()
    assert s.grad[..., 3].item() <= 0  # and what is left of it would grow the height, not shrink it


def test_binary_kl_is_never_negative():
    s, t = torch.randn(10_000) * 8, torch.randn(10_000) * 8
    # a difference of two cross-entropies, each computed as max(x, 0) - x * p + log1p(exp(-|x|)): allow a few
    # float32 ulps of the largest of those terms, |s| + |t| + 1, never more
    size = s.abs() + t.abs() + 1.0
    assert (binary_kl(s, t) >= -4 * torch.finfo(torch.float32).eps * size).all()


def test_unknown_output_loss_is_refused():
    raw = [torch.zeros(1, 3, 2, 2, 7)]
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        output_distillation_loss(raw, raw, nc=2, box_gain=1.0, obj_gain=1.0, cls_gain=1.0, kind="l1")
    assert OUTPUT_LOSSES == ("mse", "kl", "mse_ciou")
