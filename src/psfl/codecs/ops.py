"""Compression operators: what a contender does to an update BEFORE it is put on the wire.

Pure functions on tensors; every random draw comes from the generator passed in.

* :func:`topk_ternarize` - STC (Sattler et al., 2019): top-k magnitudes -> sign * mu.
* :func:`ttq_quantize` / :func:`ttq_dequantize` - FTTQ (Xu et al., 2020): threshold
  Delta = t * max|w| -> codes in {-1, 0, 1} with per-layer scales.
* :func:`qsgd_quantize` / :func:`qsgd_dequantize` - QSGD s-level stochastic quantiser
  as used by FedPAQ (Reisizadeh et al., 2020); unbiased.
* :func:`ef_correct`, :func:`ef_residual`, :func:`ef_step` - error feedback (residual
  accumulation): ``new_residual = (update + residual) - compressed``.

The outputs are exactly what the matching codecs (``stc``, ``ternary2bit``, ``qsgd``)
encode losslessly.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from psfl.utils.errors import PsflError


# ---------------------------------------------------------------------------- STC
def topk_k(numel: int, p: float) -> int:
    """Number of kept entries: k = max(1, round(p * numel)) (at most numel)."""
    if not 0.0 <= p <= 1.0:
        raise PsflError(f"sparsity p must be in [0, 1], got {p}")
    return min(int(numel), max(1, int(math.floor(p * numel + 0.5))))


def topk_ternarize(update: Tensor, p: float) -> tuple[Tensor, float]:
    """STC's sparse ternary compression of one tensor -> (ternary float32 tensor, mu).

    Keeps the k = max(1, round(p * numel)) largest |values|, sets them to
    sign(value) * mu with mu = mean of those |values|, everything else to 0.
    (A kept entry that is exactly 0 stays 0, so an update with fewer than k non-zeros
    keeps fewer.) mu is returned as a Python float that is exactly a float32.
    """
    flat = update.detach().reshape(-1).float()  # (n,)
    out = torch.zeros_like(flat)
    if flat.numel() == 0:
        return out.view(update.shape), 0.0
    k = topk_k(flat.numel(), p)
    mags, idx = torch.topk(flat.abs(), k, sorted=False)  # (k,)
    mu = mags.mean()  # float32 scalar
    out[idx] = torch.sign(flat[idx]) * mu
    return out.view(update.shape), float(mu)


# ---------------------------------------------------------------------------- FTTQ
def ttq_quantize(w: Tensor, threshold_factor: float, symmetric: bool = False
                 ) -> tuple[Tensor, float, float]:
    """FTTQ ternarisation -> (codes int8 in {-1, 0, 1}, scale_pos, scale_neg).

    Delta = threshold_factor * max|w|; code +1 where w > Delta, -1 where w < -Delta, else 0.
    The scales are the L2-optimal ones for these codes: mean w over the +1 set and mean
    |w| over the -1 set (0 for an empty set); with ``symmetric`` one shared scale, the
    mean |w| over all non-zero codes. A method that trains its scales (FTTQ's w_p)
    passes its own to :func:`ttq_dequantize` instead.
    """
    if threshold_factor < 0:
        raise PsflError(f"FTTQ threshold factor must be >= 0, got {threshold_factor}")
    w = w.detach().float()
    if w.numel() == 0:
        return torch.zeros_like(w, dtype=torch.int8), 0.0, 0.0
    delta = threshold_factor * w.abs().max()
    pos, neg = w > delta, w < -delta
    codes = pos.to(torch.int8) - neg.to(torch.int8)

    def mean_abs(m: Tensor) -> float:
        return float(w[m].abs().mean()) if bool(m.any()) else 0.0

    if symmetric:
        s = mean_abs(pos | neg)
        return codes, s, s
    return codes, mean_abs(pos), mean_abs(neg)


def ttq_dequantize(codes: Tensor, scale_pos: float, scale_neg: float) -> Tensor:
    """codes in {-1, 0, 1} -> float32 tensor with values {-scale_neg, 0, +scale_pos}."""
    sp = torch.tensor(scale_pos, dtype=torch.float32)
    sn = torch.tensor(scale_neg, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(codes > 0, sp, torch.where(codes < 0, -sn, zero))


# ---------------------------------------------------------------------------- QSGD
def qsgd_quantize(v: Tensor, s: int, generator: torch.Generator) -> tuple[float, Tensor, Tensor]:
    """QSGD s-level quantisation -> (norm, signs int8, levels int32 in [0, s]).

    norm = ||v||_2 (float32); with r = s |v_i| / norm the level is floor(r) + Bernoulli(r -
    floor(r)), so E[norm * sign * level / s] = v (unbiased). Shapes follow ``v``.
    """
    if int(s) < 1:
        raise PsflError(f"QSGD needs s >= 1 quantisation levels, got {s}")
    flat = v.detach().reshape(-1).float()  # (n,)
    norm_t = torch.linalg.vector_norm(flat)
    signs = torch.sign(flat).to(torch.int8)
    if float(norm_t) == 0.0 or flat.numel() == 0:
        levels = torch.zeros(flat.shape, dtype=torch.int32)
    else:
        r = (flat.abs() / norm_t * s).clamp(max=s)  # (n,) in [0, s]
        low = torch.floor(r)
        u = torch.rand(flat.shape, generator=generator, device=generator.device).to(flat.device)
        levels = (low + (u < (r - low)).float()).clamp(max=s).to(torch.int32)
    return float(norm_t), signs.view(v.shape), levels.view(v.shape)


def qsgd_dequantize(norm: float, signs: Tensor, levels: Tensor, s: int) -> Tensor:
    """float32 tensor norm * sign * level / s (a zero level gives +0.0)."""
    q = signs.to(torch.int32) * levels.to(torch.int32)
    return torch.tensor(norm, dtype=torch.float32) * q.float() / int(s)


# ---------------------------------------------------------------------------- error feedback
def ef_correct(update: Tensor, residual: Tensor | None) -> Tensor:
    """The error-corrected update that is compressed: update + residual."""
    return update if residual is None else update + residual


def ef_residual(update: Tensor, residual: Tensor | None, compressed: Tensor) -> Tensor:
    """new_residual = (update + residual) - compressed."""
    return ef_correct(update, residual) - compressed


def ef_step(update: Tensor, residual: Tensor | None, compress: Callable[[Tensor], Tensor]
            ) -> tuple[Tensor, Tensor]:
    """One error-feedback step -> (compressed, new_residual)."""
    corrected = ef_correct(update, residual)
    compressed = compress(corrected)
    return compressed, corrected - compressed
