"""Adaptive Global Pruning (AGP), Section III-B, Eq. 22, Algorithm 2.

The server prunes the aggregated student by a ratio zeta_t set by the round's SNRs:
global magnitude pruning (on layer-normalised magnitudes) of the conv/linear weight
tensors (never normalisation layers; biases only if asked; :func:`prunable_keys`). When
zeta_t falls, randomly chosen pruned positions are regrown (seeded) until the pruned
share equals zeta_t. The mask travels with the model and is held
during local training, so uploads stay sparse.
"""
from __future__ import annotations

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
    """|w| / RMS(w of its tensor): the score ranked globally by :func:`update_mask`.

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


def update_mask(state: dict[str, Tensor], mask: dict[str, Tensor] | None, zeta: float,
                keys: list[str], generator: torch.Generator) -> dict[str, Tensor]:
    """New mask with exactly round(zeta * n) pruned positions over ``keys``.

    More pruning than the current mask: global magnitude pruning (on layer-normalised
    magnitudes, :func:`layer_normalised_magnitude`) of the survivors (already-pruned
    positions stay pruned). Less: regrow uniformly random pruned
    positions (drawn from ``generator``) until the pruned share equals zeta.
    """
    w = _flat(layer_normalised_magnitude(state, keys), keys)
    n = w.numel()
    target = int(round(zeta * n))
    keep = torch.ones(n, dtype=torch.bool) if mask is None else _flat(mask, keys).bool()
    keep = keep.to(w.device)  # the mask follows the state's device
    pruned_now = n - int(keep.sum())
    if target > pruned_now:  # prune more: smallest |w| among kept positions
        score = torch.where(keep, w, torch.full_like(w, -1.0))  # pruned ones sort first
        order = torch.argsort(score, stable=True)
        keep = torch.ones(n, dtype=torch.bool, device=w.device)
        keep[order[:target]] = False
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
