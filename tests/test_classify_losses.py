"""Classification KD losses against sums written out by hand (math.exp/log on Python floats, never F.kl_div)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yolodistill.classification.losses import (embedding_cosine, embedding_mse, hinton_loss, kd_kl_loss,
                                               soft_targets)

pytestmark = pytest.mark.float_sensitive  # hand-computed losses within float32 rounding

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, -0.5]]


def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p_t, p_s):
    """KL(p_t || p_s) = sum_c p_t * (log p_t - log p_s)."""
    return sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_t, p_s))


def hand_soft(student, teacher, temperature):
    """T^2 * batch mean of KL(softmax(t/T) || softmax(s/T))."""
    rows = [kl(softmax(t, temperature), softmax(s, temperature)) for s, t in zip(student, teacher)]
    return temperature ** 2 * sum(rows) / len(rows)


def test_kd_kl_closed_form():
    # s = [0, 0], t = [ln 3, 0]. T = 1: p_t = [3/4, 1/4], p_s = [1/2, 1/2].
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected_t1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812
    assert kd_kl_loss(s, soft_targets(t, 1.0), 1.0).item() == pytest.approx(expected_t1, rel=1e-5)
    # T = 2: t / T = [ln sqrt(3), 0], so p_t = [sqrt3 / (sqrt3 + 1), 1 / (sqrt3 + 1)]; times T^2 = 4.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))  # 0.145363
    assert kd_kl_loss(s, soft_targets(t, 2.0), 2.0).item() == pytest.approx(expected_t2, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_hinton_loss_matches_hand_sums(temperature):
    alpha = 0.75
    s, t, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([0, 2])
    soft, hard = hinton_loss(s, soft_targets(t, temperature), labels, temperature=temperature, alpha=alpha)
    ce = -(math.log(softmax(STUDENT[0])[0]) + math.log(softmax(STUDENT[1])[2])) / 2
    assert soft.item() == pytest.approx(alpha * hand_soft(STUDENT, TEACHER, temperature), rel=1e-5)
    assert hard.item() == pytest.approx((1 - alpha) * ce, rel=1e-6)
    assert kd_kl_loss(s, soft_targets(t, temperature), temperature).item() == pytest.approx(
        hand_soft(STUDENT, TEACHER, temperature), rel=1e-5)


def test_zero_when_student_equals_teacher():
    logits = torch.tensor(STUDENT)
    for temperature in (1.0, 3.0):
        assert kd_kl_loss(logits, soft_targets(logits, temperature), temperature).item() == pytest.approx(0, abs=1e-6)
    # alpha = 1: nothing but the soft term, which vanishes
    soft, hard = hinton_loss(logits, soft_targets(logits, 2.0), torch.tensor([1, 2]), temperature=2.0, alpha=1.0)
    assert soft.item() == pytest.approx(0, abs=1e-6) and hard.item() == 0


def test_kldivloss_on_probabilities_is_a_different_loss():
    """KLDivLoss wants log p_s as input; given p_s it computes sum p_t (log p_t - p_s), which is not KL."""
    temperature = 2.0
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    p_t = soft_targets(t, temperature)
    wrong = F.kl_div(F.softmax(s / temperature, dim=1), p_t, reduction="batchmean") * temperature ** 2
    right = kd_kl_loss(s, p_t, temperature)
    hand_wrong = temperature ** 2 * sum(
        sum(pt * (math.log(pt) - ps) for pt, ps in zip(softmax(tr, temperature), softmax(sr, temperature)))
        for sr, tr in zip(STUDENT, TEACHER)) / 2
    assert wrong.item() == pytest.approx(hand_wrong, rel=1e-5)
    assert right.item() == pytest.approx(hand_soft(STUDENT, TEACHER, temperature), rel=1e-5)
    assert abs(wrong.item() - right.item()) > 1.0
    # and it does not even vanish when the student matches the teacher: its minimum is in the wrong place
    same = F.kl_div(F.softmax(t / temperature, dim=1), p_t, reduction="batchmean")
    assert same.item() < -0.5


def test_unlabeled_rows_get_only_the_soft_term():
    alpha, temperature = 0.6, 2.0
    s = torch.tensor(STUDENT, requires_grad=True)
    probs = soft_targets(torch.tensor(TEACHER), temperature)
    soft, hard = hinton_loss(s, probs, torch.tensor([0, -1]), temperature=temperature, alpha=alpha)
    assert hard.item() == pytest.approx((1 - alpha) * -math.log(softmax(STUDENT[0])[0]), rel=1e-6)
    assert soft.item() == pytest.approx(alpha * hand_soft(STUDENT, TEACHER, temperature), rel=1e-5)  # both rows
    hard.backward()
    assert torch.equal(s.grad[1], torch.zeros(3)) and s.grad[0].abs().sum() > 0

    s.grad = None
    soft, hard = hinton_loss(s, probs, torch.tensor([-1, -1]), temperature=temperature, alpha=alpha)
    assert hard.item() == 0.0  # not NaN, the mean CE of zero rows
    (soft + hard).backward()
    assert torch.isfinite(s.grad).all()


def test_t_squared_keeps_soft_gradient_scale():
    """d(T^2 KL)/ds = T (p_s - p_t) ~ (s - t)/C for large T: the factor T^2 makes it T-independent."""
    g = torch.Generator().manual_seed(0)
    s0, t = 0.5 * torch.randn(4, 10, generator=g), 0.5 * torch.randn(4, 10, generator=g)
    norms = {}
    for temperature in (2.0, 4.0, 8.0):
        s = s0.clone().requires_grad_(True)
        kd_kl_loss(s, soft_targets(t, temperature), temperature).backward()
        norms[temperature] = s.grad.norm().item()
    assert max(norms.values()) / min(norms.values()) < 1.3
    # without T^2 the gradient would shrink by 16x from T=2 to T=8
    assert (norms[2.0] / 4) / (norms[8.0] / 64) > 10


def test_ensemble_soft_targets_average_softened_probabilities():
    temperature = 2.0
    first, second = torch.tensor(TEACHER), torch.tensor(STUDENT)
    expected = [[(a + b) / 2 for a, b in zip(softmax(r1, temperature), softmax(r2, temperature))]
                for r1, r2 in zip(TEACHER, STUDENT)]
    got = soft_targets([first, second], temperature)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(2))
    # one tensor is one teacher; averaging logits first would give another distribution
    torch.testing.assert_close(soft_targets(first, temperature), torch.tensor(
        [softmax(r, temperature) for r in TEACHER]))
    assert not torch.allclose(got, soft_targets((first + second) / 2, temperature), atol=1e-3)


def test_embedding_losses_by_hand():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    # cosines 1 and 0 -> mean(1 - cos) = 0.5
    assert embedding_cosine(student, teacher).item() == pytest.approx(0.5)
    # unit vectors: row 0 equal, row 1 (0,1) vs (1,0): squared errors 1 + 1 over 4 elements
    assert embedding_mse(student, teacher).item() == pytest.approx(0.5)
    assert embedding_mse(3 * teacher, teacher).item() == pytest.approx(0.0)
