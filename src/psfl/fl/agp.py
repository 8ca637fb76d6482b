"""Adaptive Global Pruning (AGP), Section III-B, Eq. 22, Algorithm 2.

The server prunes the aggregated student by a ratio zeta_t set by the round's SNRs
(:func:`pruning_ratio`) over the conv/linear weight tensors (never normalisation layers;
biases only if asked; :func:`prunable_keys`). Where the paper is silent, the rule is a
setting (``[agp]`` in the run config, chosen by the issue-9 study):

* which survivors go when zeta_t rises (``score``, :data:`SCORE_RULES`): the smallest
  layer-normalised magnitudes globally, raw magnitudes globally, or every tensor to the
  same share by its own magnitudes; a ``layer_floor`` keeps a share of every tensor;
* which positions come back when zeta_t falls: uniformly random pruned positions (the
  paper: weights are "added randomly"); their *values* (zero, or the server's dense copy)
  are the method's concern (:class:`psfl.methods.psfl.PSFL`).

The mask travels with the model and is held during local training (applied to the
gradients before clipping and to the weights after each step), so uploads stay sparse.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def pruning_ratio(snrs_db: Sequence[float], psi_min_db: float, psi_max_db: float,
                  zeta_min: float = 0.0, zeta_max: float = 0.9) -> float:
    """Eq. 22: zeta_t = (psi_max - mean_k psi_k,t) / (psi_max - psi_min), SNRs in dB,
    clamped to [zeta_min, zeta_max] (zeta = 1 would prune everything)."""
    mean = float(sum(snrs_db)) / len(snrs_db)
    zeta = (psi_max_db - mean) / (psi_max_db - psi_min_db)
    return float(min(max(zeta, zeta_min), zeta_max))


# Normalisation layers: their affine parameters and statistics are never pruned.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def prunable_keys(model: nn.Module, prune_biases: bool = False) -> list[str]:
    """State-dict keys AGP prunes: the weight matrices/kernels (``ndim >= 2``) of the
    model's non-normalisation modules (conv, transposed conv, linear) and, if asked,
    those modules' biases. Structure is read from module types, never from key names:
    nothing of a BatchNorm/LayerNorm/GroupNorm (or other norm) layer is ever pruned.
    Keys come in state-dict order (the mask's wire order)."""
    chosen = set()
    for name, m in model.named_modules():
        if isinstance(m, _NORM_TYPES):
            continue
        prefix = f"{name}." if name else ""
        w = m._parameters.get("weight")
        if w is None or w.ndim < 2 or not w.is_floating_point():
            continue
        chosen.add(prefix + "weight")
        if prune_biases and m._parameters.get("bias") is not None:
            chosen.add(prefix + "bias")
    return [k for k in model.state_dict() if k in chosen]


def _flat(tensors: dict[str, Tensor], keys: list[str]) -> Tensor:
    return torch.cat([tensors[k].reshape(-1) for k in keys])


def _unflat(flat: Tensor, like: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    out, i = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = flat[i:i + n].view_as(like[k]).clone()
        i += n
    return out


def pruned_share(mask: dict[str, Tensor]) -> float:
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    return 1.0 - kept / total if total else 0.0


def layer_normalised_magnitude(state: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    """|w| / RMS(w of its tensor): the ``layer_normalised`` score, ranked globally.

    Plain global magnitude pruning compares raw |w| across layers, and layers with a
    small weight scale (e.g. the CSC's wide-fan-in transposed convolutions) are wiped
    out entirely: on cpu-CSC at zeta = 0.74 it pruned 100 % of ``decoder.0`` and the
    student's accuracy fell to chance. Normalising by each tensor's RMS keeps one global
    threshold while pruning every layer in proportion to its own weight distribution."""
    out = {}
    for k in keys:
        a = state[k].abs()
        rms = state[k].pow(2).mean().sqrt()
        out[k] = a / rms if float(rms) > 0 else a
    return out


def raw_magnitude(state: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    """|w|: the ``magnitude`` and ``per_layer`` score."""
    return {k: state[k].abs() for k in keys}


# agp.score: name -> (score function, global ranking?). ``per_layer`` prunes every tensor
# to the same share zeta by its own |w|; the other two rank all prunable weights at once.
SCORE_RULES: dict[str, tuple] = {
    "layer_normalised": (layer_normalised_magnitude, True),
    "magnitude": (raw_magnitude, True),
    "per_layer": (raw_magnitude, False),
}


def _prune_to(score: Tensor, keep: Tensor, target: int, protect: Tensor) -> Tensor:
    """``keep`` with its smallest-scoring kept positions pruned until ``target`` positions
    are pruned (already-pruned ones stay pruned; ``protect``ed ones are never pruned, so
    fewer may be pruned than asked)."""
    n = score.numel()
    target = min(target, n - int(protect.sum()))
    if target <= n - int(keep.sum()):
        return keep
    s = torch.where(keep, score, torch.full_like(score, -1.0))  # pruned ones sort first
    s = torch.where(protect, torch.full_like(score, float("inf")), s)
    order = torch.argsort(s, stable=True)
    out = torch.ones(n, dtype=torch.bool, device=score.device)
    out[order[:target]] = False
    return out


def update_mask(state: dict[str, Tensor], mask: dict[str, Tensor] | None, zeta: float,
                keys: list[str], generator: torch.Generator, score: str = "layer_normalised",
                layer_floor: float = 0.0) -> dict[str, Tensor]:
    """New mask with round(zeta * n) pruned positions over ``keys`` (fewer only where
    ``layer_floor`` forbids).

    More pruning than the current mask: the survivors with the smallest ``score``
    (:data:`SCORE_RULES`) are pruned, globally or per tensor; already-pruned positions stay
    pruned; in every tensor the ceil(layer_floor * n_k) best-scoring weights are never
    pruned. Less: uniformly random pruned positions (drawn from ``generator``) are regrown
    until the pruned share equals zeta (Algorithm 2: "added randomly").
    """
    score_fn, global_rank = SCORE_RULES[score]
    scores = score_fn(state, keys)
    w = _flat(scores, keys)
    n = w.numel()
    target = int(round(zeta * n))
    keep = torch.ones(n, dtype=torch.bool) if mask is None else _flat(mask, keys).bool()
    keep = keep.to(w.device)  # the mask follows the state's device
    protect = torch.zeros(n, dtype=torch.bool, device=w.device)
    if layer_floor > 0:
        i = 0
        for k in keys:
            nk = scores[k].numel()
            top = torch.topk(scores[k].reshape(-1), math.ceil(layer_floor * nk)).indices
            protect[i + top] = True
            i += nk
    pruned_now = n - int(keep.sum())
    if target > pruned_now and global_rank:
        keep = _prune_to(w, keep, target, protect)
    elif target > pruned_now:  # per_layer: every tensor to its own share zeta
        i = 0
        for k in keys:
            nk = scores[k].numel()
            sl = slice(i, i + nk)
            keep[sl] = _prune_to(w[sl], keep[sl], int(round(zeta * nk)), protect[sl])
            i += nk
    elif target < pruned_now:  # regrow random pruned positions
        pruned_idx = torch.nonzero(~keep).squeeze(1)
        pick = torch.randperm(pruned_idx.numel(), generator=generator)[: pruned_now - target]  # CPU: same on any device
        keep[pruned_idx[pick]] = True
    return {k: v.to(torch.float32) for k, v in _unflat(keep, state, keys).items()}


def apply_mask(state: dict[str, Tensor], mask: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero the pruned positions (returns a new dict; unmasked entries shared)."""
    return {k: (v * mask[k].to(v.dtype) if k in mask else v) for k, v in state.items()}


@torch.no_grad()
def mask_parameters_(params: dict[str, Tensor], mask: dict[str, Tensor]) -> None:
    """In place: hold the mask during local training (call after each optimiser step)."""
    names = [k for k in mask if k in params]
    if names:
        torch._foreach_mul_([params[k] for k in names], [mask[k] for k in names])
