"""Personalized Local Distillation (PLD), Algorithm 1, Eqs. 15-21.

Per batch, mentor (GSC) and student (CSC) see the same images over the same channel:

    task:      L'_task = CE(y, y_hat') + MSE(m, m_hat')                    (15)
               L_task  = CE(y, y_hat)  + MSE(m, m_hat)                     (16)
    distill:   L'_dis  = KL(y_hat' <- y_hat) / L_task                      (17)
               L_dis   = KL(y_hat <- y_hat') / L'_task                     (18)
    semantic:  L_sem   = [MSE(S', S) + MSE(C', C)] / (L'_task + L_task)    (19)
    totals:    L'_total = L'_task + L'_dis + L'_sem                        (20)
               L_total  = L_task  + L_dis  + L_sem                         (21)

The paper sums the terms with weight 1; ``distill_weight`` and ``semantic_weight``
(``train.*`` in the run config) scale L_dis and L_sem in both totals (1 = the paper).

Gradient routing. Each model distils towards the *other's detached* prediction, and the
divisors of Eqs. 17-19 act as weights: they are detached (so a model cannot lower its
distillation loss by inflating the other's task loss) and guarded by ``eps``. Eq. 19 is
one number but two losses: the mentor's copy detaches the student side and vice versa.
Hence the mentor's total has gradients only in the mentor (and its bridge), the
student's only in the student, and one ``backward()`` of ``L'_total + L_total`` gives
each model exactly the gradient of its own total.

Eq. 19 space. Mentor and student encodings differ in width (D' vs D) and grid. A
per-client :class:`SemanticBridge` (never aggregated, kept with the mentor) pools the
finer token grid onto the coarser one and maps the student's width onto the mentor's
with bias-free linear maps (one for S, one for C). It is trained with the mentor's
optimiser, from the mentor's copy of Eq. 19 only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psfl.models.base import SCOutput


def kd_kl(logits: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(target/T) || softmax(logits/T)) * T^2, batch mean; target detached."""
    T = temperature
    log_p = F.log_softmax(logits / T, dim=-1)
    q = F.softmax(target_logits.detach() / T, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * (T * T)


def adaptive_distillation_loss(logits: Tensor, other_logits: Tensor, other_task_loss: Tensor,
                               temperature: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Eqs. 17-18: KL towards the other model's prediction, divided by the other model's
    task loss (a detached weight): unreliable soft labels distil weakly."""
    return kd_kl(logits, other_logits, temperature) / (other_task_loss.detach() + eps)


def _pool_tokens(t: Tensor, grid: tuple[int, int], to: tuple[int, int]) -> Tensor:
    if grid == to:
        return t
    B, L, D = t.shape
    img = t.transpose(1, 2).reshape(B, D, *grid)  # (B, D, h, w)
    return F.adaptive_avg_pool2d(img, to).flatten(2).transpose(1, 2)  # (B, h'*w', D)


class SemanticBridge(nn.Module):
    """Maps a student's (S, C) tokens into a mentor's token space for Eq. 19."""

    def __init__(self, student_dim: int, mentor_dim: int) -> None:
        super().__init__()
        self.same = student_dim == mentor_dim
        self.proj_S = nn.Identity() if self.same else nn.Linear(student_dim, mentor_dim, bias=False)
        self.proj_C = nn.Identity() if self.same else nn.Linear(student_dim, mentor_dim, bias=False)

    @staticmethod
    def _project(proj: nn.Module, t: Tensor, frozen: bool) -> Tensor:
        if isinstance(proj, nn.Identity):
            return t
        w = proj.weight.detach() if frozen else proj.weight
        return F.linear(t, w)

    def align(self, mentor: SCOutput, student: SCOutput, for_mentor: bool
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(S', S, C', C) on a common grid and width.

        ``for_mentor=True``: the student's tokens are detached and the bridge is live
        (the mentor's copy of Eq. 19); ``False``: the mentor's tokens and the bridge are
        detached, the student's tokens live (the student's copy)."""
        gm, gs = mentor.grid, student.grid
        to = gm if gm[0] * gm[1] <= gs[0] * gs[1] else gs
        Sm, Cm = _pool_tokens(mentor.S, gm, to), _pool_tokens(mentor.C, gm, to)
        Ss, Cs = _pool_tokens(student.S, gs, to), _pool_tokens(student.C, gs, to)
        if for_mentor:
            Ss, Cs = Ss.detach(), Cs.detach()
        else:
            Sm, Cm = Sm.detach(), Cm.detach()
        frozen = not for_mentor
        return Sm, self._project(self.proj_S, Ss, frozen), Cm, self._project(self.proj_C, Cs, frozen)


def adaptive_semantic_loss(S_m: Tensor, S_s: Tensor, C_m: Tensor, C_s: Tensor,
                           task_m: Tensor, task_s: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 19: [MSE(S', S) + MSE(C', C)] / (L'_task + L_task), divisor detached."""
    return (F.mse_loss(S_m, S_s) + F.mse_loss(C_m, C_s)) / (task_m.detach() + task_s.detach() + eps)


@dataclass
class PLDLosses:
    mentor: dict[str, Tensor]  # task, ce, mse, dis, sem, total  (Eq. 15, 17, 19, 20)
    student: dict[str, Tensor]  # task, ce, mse, dis, sem, total  (Eq. 16, 18, 19, 21)
    mentor_logits: Tensor
    student_logits: Tensor

    @property
    def joint(self) -> Tensor:
        """L'_total + L_total: one backward yields each model's own gradient."""
        return self.mentor["total"] + self.student["total"]


def task_terms(out: SCOutput, x: Tensor, y: Tensor, classifier: nn.Module, mse_scale: float = 1.0
               ) -> tuple[dict[str, Tensor], Tensor]:
    """Eqs. 15/16 for one model: CE(y, classifier(m_hat)) + mse_scale * MSE(m, m_hat), as
    ``{ce, mse, task}`` plus the classifier's logits (one definition: psfl.training.losses)."""
    from psfl.training.losses import task_loss_terms

    logits = classifier(out.x_hat)
    terms = task_loss_terms(logits, out.x_hat, x, y, mse_scale)
    return {"ce": terms["ce"], "mse": terms["mse"], "task": terms["loss"]}, logits


def pld_losses(mentor_out: SCOutput, student_out: SCOutput, x: Tensor, y: Tensor,
               classifier: nn.Module, bridge: SemanticBridge, temperature: float = 1.0,
               eps: float = 1e-6, distill: bool = True, mse_scale: float = 1.0,
               distill_weight: float = 1.0, semantic_weight: float = 1.0) -> PLDLosses:
    """All PLD terms for one batch (Eqs. 15-21). ``distill=False`` keeps only the task
    losses (the 'without PLD distillation' baseline)."""
    m, m_logits = task_terms(mentor_out, x, y, classifier, mse_scale)
    s, s_logits = task_terms(student_out, x, y, classifier, mse_scale)
    if distill:
        m["dis"] = adaptive_distillation_loss(m_logits, s_logits, s["task"], temperature, eps)  # (17)
        s["dis"] = adaptive_distillation_loss(s_logits, m_logits, m["task"], temperature, eps)  # (18)
        m["sem"] = adaptive_semantic_loss(*bridge.align(mentor_out, student_out, for_mentor=True),
                                          m["task"], s["task"], eps)  # (19), mentor's copy
        s["sem"] = adaptive_semantic_loss(*bridge.align(mentor_out, student_out, for_mentor=False),
                                          m["task"], s["task"], eps)  # (19), student's copy
    else:
        zero = x.new_zeros(())
        m["dis"] = m["sem"] = s["dis"] = s["sem"] = zero
    m["total"] = m["task"] + distill_weight * m["dis"] + semantic_weight * m["sem"]  # (20)
    s["total"] = s["task"] + distill_weight * s["dis"] + semantic_weight * s["sem"]  # (21)
    return PLDLosses(m, s, m_logits, s_logits)
