"""PLD (Eqs. 15-21): each term against a hand computation; gradient routing."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psfl.fl.pld import (SemanticBridge, adaptive_distillation_loss, adaptive_semantic_loss, kd_kl,
                         pld_losses)
from psfl.models.base import SCOutput


def _kl(q: list[float], p: list[float]) -> float:
    """KL(q || p) in float64, by the definition."""
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))


def _softmax_of_logs(weights: list[float], T: float = 1.0) -> list[float]:
    """softmax(log(w) / T) = w^(1/T) / sum w^(1/T), in closed form."""
    a = [w ** (1.0 / T) for w in weights]
    return [x / sum(a) for x in a]


# Two rows of asymmetric distributions, given by their unnormalised weights.
MODEL_W = [[1.0, 2.0, 5.0], [4.0, 4.0, 1.0]]  # p (the model being trained)
TARGET_W = [[3.0, 1.0, 4.0], [1.0, 2.0, 6.0]]  # q (the detached target)
# float32 log-probabilities of magnitude <= 3 carry ~1e-7 absolute error each on any CPU;
# the KL sums three such terms per row, so 2e-6 absolute is a safe bound (the swapped
# direction differs by > 1e-2, checked below).
KL_TOL = 2e-6


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_kd_kl_is_kl_of_target_from_model_times_t2(T):
    logits = torch.tensor([[math.log(w) for w in row] for row in MODEL_W])
    target = torch.tensor([[math.log(w) for w in row] for row in TARGET_W])
    p = [_softmax_of_logs(r, T) for r in MODEL_W]
    q = [_softmax_of_logs(r, T) for r in TARGET_W]
    want = T * T * sum(_kl(qi, pi) for qi, pi in zip(q, p)) / 2  # batch mean of KL(q || p)
    swapped = T * T * sum(_kl(pi, qi) for qi, pi in zip(q, p)) / 2  # KL(p || q): the wrong direction
    assert abs(want - swapped) > 5e-3  # the case tells the two directions apart
    assert kd_kl(logits, target, T).item() == pytest.approx(want, abs=KL_TOL)


def test_kd_kl_worked_by_hand():
    # p = [1, 2, 5] / 8, q = [3, 1, 4] / 8:
    # KL(q || p) = 3/8 ln 3 + 1/8 ln(1/2) + 4/8 ln(4/5) = 0.2137644 (KL(p || q) = 0.1754...)
    logits = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]])
    target = torch.tensor([[math.log(3.0), 0.0, math.log(4.0)]])
    assert kd_kl(logits, target).item() == pytest.approx(0.2137644, abs=KL_TOL)


def test_adaptive_distillation_divides_by_other_task_loss():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]], requires_grad=True)
    other = torch.tensor([[0.3, 0.1, 2.0], [1.0, 0.0, 0.0]])
    task = torch.tensor(2.5, requires_grad=True)
    got = adaptive_distillation_loss(logits, other, task, eps=0.0)
    assert got.item() == pytest.approx(kd_kl(logits, other).item() / 2.5, rel=1e-6)
    got.backward()
    assert task.grad is None  # the divisor is a detached weight
    assert logits.grad is not None


def test_adaptive_semantic_loss_hand_computation():
    S_m = torch.tensor([[[1.0, 2.0]]])
    S_s = torch.tensor([[[0.0, 0.0]]])
    C_m = torch.tensor([[[3.0, 3.0]]])
    C_s = torch.tensor([[[1.0, 1.0]]])
    got = adaptive_semantic_loss(S_m, S_s, C_m, C_s, torch.tensor(1.5), torch.tensor(0.5), eps=0.0)
    # MSE(S) = (1 + 4) / 2 = 2.5 ; MSE(C) = (4 + 4) / 2 = 4 ; / (1.5 + 0.5)
    assert got.item() == pytest.approx((2.5 + 4.0) / 2.0)


class _Lin(nn.Module):
    """A toy SC model: S = W x, C = S + tiny, x_hat = V C."""

    def __init__(self, d_in, d_sem, grid):
        super().__init__()
        self.enc = nn.Linear(d_in, d_sem * grid[0] * grid[1])
        self.dec = nn.Linear(d_sem * grid[0] * grid[1], d_in)
        self.grid, self.d = grid, d_sem

    def forward(self, x):
        B = x.shape[0]
        s = self.enc(x.flatten(1))
        S = s.view(B, self.grid[0] * self.grid[1], self.d)
        C = torch.tanh(S)
        x_hat = self.dec(C.flatten(1)).view_as(x)
        return SCOutput(S=S, X=S, Y=S, C=C, x_hat=x_hat, grid=self.grid)


def _setup():
    torch.manual_seed(0)
    mentor, student = _Lin(12, 6, (4, 4)), _Lin(12, 3, (2, 2))
    clf = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    for p in clf.parameters():
        p.requires_grad_(False)
    bridge = SemanticBridge(student_dim=3, mentor_dim=6)
    x = torch.randn(8, 1, 3, 4)
    y = torch.randint(0, 5, (8,))
    return mentor, student, clf, bridge, x, y


def test_task_terms_equal_eqs_15_16():
    mentor, student, clf, bridge, x, y = _setup()
    om, os_ = mentor(x), student(x)
    L = pld_losses(om, os_, x, y, clf, bridge)
    for out, terms in ((om, L.mentor), (os_, L.student)):
        ce = F.cross_entropy(clf(out.x_hat), y)
        mse = ((out.x_hat - x) ** 2).mean()
        assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
        assert terms["task"].item() == pytest.approx(ce.item() + mse.item(), rel=1e-5)
        assert terms["total"].item() == pytest.approx(
            (terms["task"] + terms["dis"] + terms["sem"]).item(), rel=1e-6)
    # Eq. 17/18 use the other model's task loss as divisor
    assert L.mentor["dis"].item() == pytest.approx(
        kd_kl(L.mentor_logits, L.student_logits).item() / (L.student["task"].item() + 1e-6), rel=1e-5)
    assert L.student["dis"].item() == pytest.approx(
        kd_kl(L.student_logits, L.mentor_logits).item() / (L.mentor["task"].item() + 1e-6), rel=1e-5)
    # Eq. 19 is one number for both models
    assert L.mentor["sem"].item() == pytest.approx(L.student["sem"].item(), rel=1e-6)


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_mentor_total_reaches_only_mentor_and_bridge():
    mentor, student, clf, bridge, x, y = _setup()
    L = pld_losses(mentor(x), student(x), x, y, clf, bridge)
    L.mentor["total"].backward()
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(mentor))
    assert all(g is None for g in _grads(student))
    assert all(g is not None for g in _grads(bridge))
    assert all(p.grad is None for p in clf.parameters())


def test_student_total_reaches_only_student():
    mentor, student, clf, bridge, x, y = _setup()
    L = pld_losses(mentor(x), student(x), x, y, clf, bridge)
    L.student["total"].backward()
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(student))
    assert all(g is None for g in _grads(mentor))
    assert all(g is None for g in _grads(bridge))


def test_joint_backward_equals_separate_backwards():
    mentor, student, clf, bridge, x, y = _setup()
    L = pld_losses(mentor(x), student(x), x, y, clf, bridge)
    L.joint.backward()
    joint = [p.grad.clone() for p in list(mentor.parameters()) + list(student.parameters())]
    for m in (mentor, student, bridge):
        m.zero_grad(set_to_none=True)
    L = pld_losses(mentor(x), student(x), x, y, clf, bridge)
    L.mentor["total"].backward(retain_graph=True)
    L.student["total"].backward()
    sep = [p.grad for p in list(mentor.parameters()) + list(student.parameters())]
    for a, b in zip(joint, sep):
        torch.testing.assert_close(a, b)


def test_without_distillation_only_task_terms():
    mentor, student, clf, bridge, x, y = _setup()
    L = pld_losses(mentor(x), student(x), x, y, clf, bridge, distill=False)
    assert L.mentor["total"].item() == pytest.approx(L.mentor["task"].item())
    assert L.student["total"].item() == pytest.approx(L.student["task"].item())


def test_term_weights_scale_dis_and_sem_in_both_totals():
    """Eqs. 20-21 with train.distill_weight / semantic_weight: total = task + a dis + b sem,
    the terms themselves unchanged (1, 1 = the paper)."""
    mentor, student, clf, bridge, x, y = _setup()
    om, os_ = mentor(x), student(x)
    one = pld_losses(om, os_, x, y, clf, bridge)
    w = pld_losses(om, os_, x, y, clf, bridge, distill_weight=0.25, semantic_weight=3.0)
    for a, b in ((one.mentor, w.mentor), (one.student, w.student)):
        assert b["dis"].item() == a["dis"].item() and b["sem"].item() == a["sem"].item() > 0
        hand = a["task"].item() + 0.25 * a["dis"].item() + 3.0 * a["sem"].item()
        assert b["total"].item() == pytest.approx(hand, rel=1e-6)
        assert a["total"].item() == pytest.approx(a["task"].item() + a["dis"].item() + a["sem"].item(), rel=1e-6)
