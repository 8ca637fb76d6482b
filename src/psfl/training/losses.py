"""The task loss of an SC model (Eq. 8 + the MSE of Eqs. 15/16) and the weight of its
MSE term: one definition used by central training, PLD and every federated method."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psfl.utils.errors import PsflError
from psfl.models.base import SCOutput


def task_loss_terms(logits: Tensor, x_hat: Tensor, x: Tensor, y: Tensor, mse_scale: float = 1.0,
                    ce_weight: float = 1.0) -> dict[str, Tensor]:
    """The task loss of one SC model, Eq. 8 + Eqs. 15/16: ``ce`` = CE(y, y_hat) with
    y_hat = softmax(logits) of the evaluator on m_hat (Eq. 8), ``mse`` = MSE(m, m_hat)
    (mean over pixels, model space), ``loss`` = ce + mse_scale * mse (L_task of Eq. 16,
    L'_task of Eq. 15). ``mse_scale`` sets the MSE term's weight and pixel space (see
    ``train.mse_weight`` / ``train.mse_space``; 1 = plain MSE of model-space pixels).
    ``ce_weight`` scales the CE term (0: pure MSE, the deep-JSCC objective; CE is still
    reported)."""
    ce = F.cross_entropy(logits, y)
    mse = F.mse_loss(x_hat, x)
    return {"ce": ce, "mse": mse, "loss": (ce if ce_weight == 1.0 else ce_weight * ce) + mse_scale * mse}


def task_loss(out: SCOutput, x: Tensor, y: Tensor, evaluator: nn.Module, mse_scale: float = 1.0,
              ce_weight: float = 1.0) -> dict[str, Tensor]:
    """Eqs. 8 and 15/16 for a model output: scores ``out.x_hat`` with the (frozen)
    evaluator and returns :func:`task_loss_terms` (``ce``, ``mse``, ``loss``). With
    ``ce_weight = 0`` the classifier only reports CE (no gradient through it)."""
    if ce_weight == 0:
        with torch.no_grad():
            logits = evaluator(out.x_hat.detach())
    else:
        logits = evaluator(out.x_hat)
    return task_loss_terms(logits, out.x_hat, x, y, mse_scale, ce_weight)


def mse_scale_for(prepared: Any, weight: float = 1.0, space: str = "standardized") -> float:
    """Factor on the model-space MSE(m, m_hat) of Eqs. 15/16 (``train.mse_weight``,
    ``train.mse_space``). ``unit``: MSE of [0, 1] pixels times ``weight``;
    ``standardized``: that MSE divided by the training set's pixel variance (the MSE of
    z-scored images: 1.0 means "as bad as predicting the mean pixel";
    :func:`psfl.evaluate.baselines.pixel_variance` of ``prepared.x_train``, computed once
    per prepared split)."""
    from psfl.evaluate.baselines import statistics_of

    if space not in ("standardized", "unit"):
        raise PsflError(f"mse space must be 'standardized' or 'unit', got {space!r}")
    res = prepared.input
    std2 = sum(s * s for s in res.std) / len(res.std)  # model-space MSE -> [0, 1]-pixel MSE
    if space == "unit":
        var = 1.0
    else:
        var = statistics_of(prepared).variance
    return float(weight * std2 / var)
