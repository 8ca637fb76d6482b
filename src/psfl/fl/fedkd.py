"""FedKD's adaptive mutual distillation (Wu et al., "Communication-efficient federated
learning via knowledge distillation", Nature Communications 13, 2032, 2022): the
nearest prior art to PLD.

A local mentor (teacher) and a shared mentee (student) learn from each other. Unlike
PLD (Eqs. 17-18 divide each model's distillation by the *other* model's task loss),
FedKD weights both directions by the *sum* of the two task losses:

    L^d_t = KL(y_s -> y_t) / (L^task_t + L^task_s)        L^d_s = KL(y_t -> y_s) / (L^task_t + L^task_s)
    L^h   = MSE(H_t, W H_s) / (L^task_t + L^task_s)       (hidden states; here S and C via the bridge)
    L_t   = L^task_t + L^d_t + L^h                         L_s = L^task_s + L^d_s + L^h

so both models distil strongly when both are reliable and weakly when either is not.
The divisor is a detached weight (as in :mod:`psfl.fl.pld`), guarded by ``eps``.
"""
from __future__ import annotations

from torch import Tensor, nn

from psfl.fl.pld import PLDLosses, SemanticBridge, adaptive_semantic_loss, kd_kl, task_terms
from psfl.models.base import SCOutput


def fedkd_losses(mentor_out: SCOutput, student_out: SCOutput, x: Tensor, y: Tensor, classifier: nn.Module,
                 bridge: SemanticBridge, temperature: float = 1.0, eps: float = 1e-6, mse_scale: float = 1.0
                 ) -> PLDLosses:
    """FedKD's mentor and mentee loss terms for one batch (``task``, ``dis``, ``sem``, ``total``)."""
    m, m_logits = task_terms(mentor_out, x, y, classifier, mse_scale)
    s, s_logits = task_terms(student_out, x, y, classifier, mse_scale)
    weight = 1.0 / (m["task"].detach() + s["task"].detach() + eps)  # 1 / (L^task_t + L^task_s)
    m["dis"] = kd_kl(m_logits, s_logits, temperature) * weight
    s["dis"] = kd_kl(s_logits, m_logits, temperature) * weight
    m["sem"] = adaptive_semantic_loss(*bridge.align(mentor_out, student_out, for_mentor=True),
                                      m["task"], s["task"], eps)
    s["sem"] = adaptive_semantic_loss(*bridge.align(mentor_out, student_out, for_mentor=False),
                                      m["task"], s["task"], eps)
    m["total"] = m["task"] + m["dis"] + m["sem"]
    s["total"] = s["task"] + s["dis"] + s["sem"]
    return PLDLosses(m, s, m_logits, s_logits)
