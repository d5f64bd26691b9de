"""Compression that deploys: 2:4 sparsity (masks, their survival through training, the ONNX report) and INT8 fake
quantization (by hand, straight-through gradients, calibration, stripping and re-attaching), on tiny CPU models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from yolodistill.compress import quant as q
from yolodistill.compress.sparsity import magnitude_mask, onnx_2to4_report, prune_2to4, violations_2to4

from .conftest import CLASSIFY_IMGSZ
from .deploy_helpers import TRT_OK, _one_thread, one_line_error, run  # noqa: F401 -- torch on one thread here too

pytestmark = pytest.mark.float_sensitive  # the sparse export goes through the parity check


# ---- 1. 2:4 sparsity -----------------------------------------------------------------------------------------------

class TinyNet(nn.Module):
    """A 3-channel stem, a depthwise conv, two prunable convs and a prunable linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.pw = nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.conv(self.dw(torch.relu(self.stem(x)))))))
        return self.fc(x.mean((2, 3)))


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def groups_of_4(w: torch.Tensor) -> list[torch.Tensor]:
    """Each group of 4 consecutive input weights, per output channel and kernel position, by explicit loops."""
    w = w if w.dim() == 4 else w[:, :, None, None]
    k, c, r, s = w.shape
    return [w[o, i:i + 4, a, b] for o in range(k) for a in range(r) for b in range(s) for i in range(0, c, 4)]


def test_magnitude_mask_keeps_the_two_largest_of_each_group():
    torch.manual_seed(1)
    for shape in ((6, 8, 3, 3), (5, 12, 1, 1), (4, 16)):
        w = torch.randn(shape)
        mask = magnitude_mask(w)
        assert mask.shape == w.shape and set(mask.unique().tolist()) == {0.0, 1.0}
        for group, m in zip(groups_of_4(w), groups_of_4(mask)):
            kept = set(group.abs().argsort(descending=True)[:2].tolist())
            assert set(m.nonzero().flatten().tolist()) == kept


def test_prune_2to4_masks_prunable_layers_and_leaves_stem_and_depthwise_dense():
    model = tiny_net()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_2to4(model)
    assert sorted(masks.layers) == ["conv", "fc", "pw"]
    for name in ("conv", "pw", "fc"):
        w = getattr(model, name).weight.detach()
        before = dense[f"{name}.weight"]
        for group, orig in zip(groups_of_4(w), groups_of_4(before)):
            assert int((group == 0).sum()) >= 2
            keep = orig.abs().argsort(descending=True)[:2]
            assert torch.equal(group[keep], orig[keep])  # the two largest |w| are kept as they were
        assert violations_2to4(w) == 0
    for name in ("stem.weight", "dw.weight", "stem.bias", "conv.bias", "fc.bias"):
        assert torch.equal(dict(model.named_parameters())[name], dense[name])
    assert masks.describe().startswith("2:4 sparsity on 3 layers")
    skipped = prune_2to4(tiny_net(), skip=["fc"])
    assert sorted(skipped.layers) == ["conv", "pw"]
    masks.remove()
    skipped.remove()


def test_masks_survive_sgd_momentum_steps():
    model = tiny_net()
    masks = prune_2to4(model)
    zeros = {n: getattr(model, n).weight.detach() == 0 for n in masks.layers}
    kept_before = {n: getattr(model, n).weight.detach().clone() for n in masks.layers}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8, generator=g)).pow(2).sum().backward()
        for n in masks.layers:  # the gradient hooks: no gradient reaches a pruned weight
            assert (getattr(model, n).weight.grad[zeros[n]] == 0).all()
        opt.step()
        masks.apply()
        for n in masks.layers:
            w = getattr(model, n).weight.detach()
            assert (w[zeros[n]] == 0).all() and violations_2to4(w) == 0
    for n in masks.layers:  # the kept weights did train
        assert not torch.equal(getattr(model, n).weight.detach()[~zeros[n]], kept_before[n][~zeros[n]])
    masks.remove()
    model(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
    assert (model.conv.weight.grad[zeros["conv"]] != 0).any()  # hooks gone after remove()


def test_sparsity_masks_apply_zeroes_what_an_update_brought_back():
    model = tiny_net()
    masks = prune_2to4(model)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert violations_2to4(model.fc.weight) > 0
    masks.apply()
    assert violations_2to4(model.fc.weight) == 0
    masks.remove()


def test_violations_2to4_counts_a_broken_group():
    torch.manual_seed(3)
    w = torch.randn(4, 8, 3, 3)
    w.mul_(magnitude_mask(w))
    assert violations_2to4(w) == 0 and violations_2to4(w.numpy()) == 0
    broken = w.clone()
    group = broken[2, 4:8, 1, 0]
    group[group == 0] = 0.5  # one group of 4 with no zero left
    assert violations_2to4(broken) == 1 and violations_2to4(broken.numpy()) == 1
    one_zero = w.clone()
    one_zero[0, 0:4, 0, 0] = torch.tensor([1.0, 2.0, 0.0, 3.0])  # one zero is not enough either
    assert violations_2to4(one_zero) == 1
    assert violations_2to4(torch.zeros(3, 8)) == 0
    with pytest.raises(ValueError):
        violations_2to4(torch.zeros(4, 3, 3, 3))  # the stem: no groups of 4


def test_sparsity_pattern_other_than_2to4_is_a_user_error():
    from yolodistill.compress import Compression
    from yolodistill.errors import UserError

    assert Compression(sparsity="2:4").sparsity == "2:4" and not Compression().enabled
    with pytest.raises(UserError, match="only 2:4"):
        Compression(sparsity="1:4")


@pytest.mark.slow
def test_sparse_classifier_distill_then_export(shapes_data, shape_teachers, tmp_path, capsys):
    from yolodistill.classification.models import read_checkpoint

    teacher = shape_teachers[0]
    assert run("classify", "distill", "--data", shapes_data, "--weights", teacher, "--teacher", teacher,
               "--model", "cnn", "--sparsity", "2:4", "--epochs", "1", "--imgsz", CLASSIFY_IMGSZ,
               "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", tmp_path, "--name", "s") == 0
    best = tmp_path / "s" / "weights" / "best.pt"
    ckpt = read_checkpoint(best)
    assert ckpt["sparsity"] == "2:4" and "quant" not in ckpt
    weights = {k: v for k, v in ckpt["model"].items() if k.endswith("weight") and v.dim() in (2, 4)}
    sparse = [k for k, v in weights.items() if v.shape[1] % 4 == 0]
    assert sparse and all(violations_2to4(weights[k]) == 0 for k in sparse)
    assert (weights["stages.0.0.weight"] != 0).all()  # the 3-channel stem stays dense

    assert run("export", "--weights", best) == 0
    report = onnx_2to4_report(str(best.with_suffix(".onnx")))
    assert report["violations"] == 0
    assert len(report["sparse_layers"]) == len(sparse) and report["checked"] == len(sparse)
    if not TRT_OK:  # the trtexec line for the target asks for 2:4 sparse kernels
        line = one_line_error(capsys, "export", "--weights", best, "--include", "engine")
        assert "trtexec --onnx=" in line and "--sparsity=enable" in line


def test_onnx_2to4_report_flags_a_dense_layer(tmp_path):
    """A hand-made ONNX file: a 2:4 conv, a broken-but-mostly-zero Gemm, and a dense conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    good = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    good *= magnitude_mask(torch.from_numpy(good)).numpy()
    gemm = np.zeros((8, 4), np.float32)  # Gemm without transB: stored (in, out)
    gemm[0:3, 0] = 1.0  # one group of 4 inputs with three non-zeros: a violation, yet 90% zeros overall
    dense = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "good"], ["y"], name="good"),
             helper.make_node("Conv", ["y", "dense"], ["z"], name="dense"),
             helper.make_node("GlobalAveragePool", ["z"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "gemm"], ["out"], name="gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 2, 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                              initializer=[numpy_helper.from_array(a, n)
                                           for a, n in ((good, "good"), (dense, "dense"), (gemm, "gemm"))])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = onnx_2to4_report(str(path))
    assert report == {"checked": 3, "sparse_layers": ["good", "gemm"], "violations": 1}


# ---- 2. quantization units -----------------------------------------------------------------------------------------

def fake_quant_by_hand(x: np.ndarray, amax) -> np.ndarray:
    """Symmetric INT8: scale amax / 127, round half to even (numpy's rounding), clamp to [-128, 127]."""
    scale = np.asarray(amax, np.float64) / 127.0
    return (np.clip(np.round(x / scale), -128, 127) * scale).astype(np.float32)


def test_fake_quantizer_per_tensor_matches_hand_computation():
    fq = q.FakeQuantizer()
    fq.amax.fill_(127.0)  # scale 1: halves are exact, so round-half-to-even shows
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4, -3.6, 126.6, 127.4, 200.0, -127.6, -128.4, -300.0])
    y = fq(x)
    assert y.tolist() == [0.0, 2.0, 2.0, 0.0, -2.0, -2.0, 3.0, -4.0, 127.0, 127.0, 127.0, -128.0, -128.0, -128.0]
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 5) * 3
    fq.amax.fill_(4.0)
    np.testing.assert_allclose(fq(x).numpy(), fake_quant_by_hand(x.numpy(), 4.0), rtol=0, atol=1e-6)
    assert fq(x).unique().numel() <= 256


def test_fake_quantizer_per_channel_matches_hand_computation():
    fq = q.FakeQuantizer(3, axis=0)
    amax = torch.tensor([127.0, 254.0, 63.5])  # scales 1, 2, 0.5
    fq.amax.copy_(amax)
    x = torch.tensor([[0.5, 1.5, 300.0, -300.0],
                      [1.0, 3.0, 5.2, -255.0],
                      [0.25, 0.75, -64.5, 63.6]])
    expected = [[0.0, 2.0, 127.0, -128.0],
                [0.0, 4.0, 6.0, -256.0],
                [0.0, 1.0, -64.0, 63.5]]
    assert fq(x).tolist() == expected
    torch.manual_seed(5)
    w = torch.randn(3, 4, 3, 3)
    np.testing.assert_allclose(fq(w).numpy(), fake_quant_by_hand(w.numpy(), amax.numpy().reshape(3, 1, 1, 1)),
                               rtol=0, atol=1e-6)
    dynamic = q.FakeQuantizer(3, axis=0, dynamic=True)  # a weight quantizer: its range follows the weight
    y = dynamic(w)
    observed = w.abs().amax(dim=(1, 2, 3))
    assert torch.equal(dynamic.amax, observed)
    np.testing.assert_allclose(y.numpy(), fake_quant_by_hand(w.numpy(), observed.numpy().reshape(3, 1, 1, 1)),
                               rtol=0, atol=1e-6)


def test_fake_quantizer_gradient_is_straight_through_inside_the_range():
    fq = q.FakeQuantizer()
    fq.amax.fill_(127.0)
    x = torch.tensor([-300.0, -129.0, -50.3, 0.2, 99.7, 126.9, 129.0, 300.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    per_channel = q.FakeQuantizer(2, axis=0)
    per_channel.amax.copy_(torch.tensor([127.0, 12.7]))  # channel 1 saturates at 12.7
    w = torch.tensor([[50.0, 200.0], [5.0, 20.0]], requires_grad=True)
    per_channel(w).sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_calibrate_sets_input_ranges_to_the_max_seen():
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 3))
    names = q.quantize_model(model)
    assert names == ["0", "3"] and q.is_quantized(model)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(2, 4, 2, 2, generator=g) * s for s in (1.0, 5.0, 2.0)]  # the largest in the middle
    seen = []
    hook = model[3].register_forward_pre_hook(lambda m, args: seen.append(args[0].abs().max()))
    model.train()
    assert q.calibrate(model, batches, model) == 3
    hook.remove()
    assert model.training  # restored
    assert float(model[0].input_quantizer.amax) == max(float(b.abs().max()) for b in batches)
    assert float(model[3].input_quantizer.amax) == float(max(seen))
    assert not model[0].input_quantizer.calibrating and not model[3].input_quantizer.calibrating
    with pytest.raises(ValueError):
        q.calibrate(model, [], model)


def calibrated(model: nn.Module, seed: int = 7, shape=(2, 3, 8, 8)) -> torch.Tensor:
    """Quantize `model` in place, calibrate it on two random batches, return a third input."""
    q.quantize_model(model)
    g = torch.Generator().manual_seed(seed)
    q.calibrate(model, [torch.randn(*shape, generator=g) for _ in range(2)], model)
    return torch.randn(*shape, generator=g)


def test_strip_then_attach_quantizers_round_trips_outputs_exactly():
    model = tiny_net().eval()
    with torch.no_grad():
        plain_out = model(torch.zeros(1, 3, 8, 8))
    x = calibrated(model)
    with torch.no_grad():
        quant_out = model(x)
        assert not torch.equal(quant_out, tiny_net().eval()(x))  # the quantizers do change the output
    state = q.strip_quantizers(model)
    assert not q.is_quantized(model) and all(type(m) in (nn.Conv2d, nn.Linear) for m in
                                             (model.stem, model.dw, model.conv, model.pw, model.fc))
    assert not any("quantizer" in k for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(torch.zeros(1, 3, 8, 8)), plain_out)
    assert state["format"] == q.QUANT_FORMAT and set(state["layers"]) == {"stem", "dw", "conv", "pw", "fc"}
    q.attach_quantizers(model, state)
    with torch.no_grad():
        assert torch.equal(model(x), quant_out)
    fresh = tiny_net().eval()
    q.attach_quantizers(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(x), quant_out)
    with pytest.raises(ValueError, match="does not match"):
        q.attach_quantizers(nn.Sequential(nn.Conv2d(3, 3, 1)), state)
    with pytest.raises(ValueError):
        q.attach_quantizers(tiny_net(), {"layers": {}})


def test_split_state_dict_gives_a_plain_loadable_state_dict():
    from yolodistill.classification.models import build_classifier

    model = build_classifier("cnn_small", 3, imgsz=CLASSIFY_IMGSZ).eval()
    x = calibrated(model, shape=(2, 3, CLASSIFY_IMGSZ, CLASSIFY_IMGSZ))
    with torch.no_grad():
        quant_out = model(x)
    plain, state = q.split_state_dict(model.state_dict())
    assert not any("quantizer" in k for k in plain)
    fresh = build_classifier("cnn_small", 3, imgsz=CLASSIFY_IMGSZ).eval()
    fresh.load_state_dict(plain, strict=True)
    assert state["format"] == q.QUANT_FORMAT and set(state["layers"]) == {"stages.0.0", "stages.1.0", "head"}
    q.attach_quantizers(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(x), quant_out)
    assert q.split_state_dict(plain) == (plain, None)
