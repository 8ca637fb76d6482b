"""``svd``: truncated-SVD factors of a matrix, FedKD's "dynamic gradient approximation"
(Wu et al. 2022, "Communication-efficient federated learning via knowledge
distillation", Nature Communications 13, 2032).

A tensor is viewed as a matrix W of shape (m, n): a 2-D tensor as is, a conv kernel
(out, in, k, k) as (out, in*k*k). W = U diag(sigma) V^T is truncated to the smallest
rank r whose singular values hold an energy share >= T (:func:`svd_rank`); by
Eckart-Young the relative error ||W - W_r||_F^2 / ||W||_F^2 is then exactly the
discarded share, <= 1 - T. The factors travel, never the rebuilt matrix::

    flag 1 (factors): varint r | A = U_r diag(sigma_r) as (m, r) float32 | B = V_r^T as (r, n) float32
                      W_hat = A @ B;  4 * r * (m + n) bytes after the header
    flag 0 (dense):   numel float32 values (exact)

Dense is used for tensors with fewer than 2 dimensions, for non-finite values (so the
runner's divergence check, not the codec, reports them) and whenever the factors would
not be smaller than the dense values, r * (m + n) >= m * n. Sizes: :func:`svd_nbytes`.

FedKD raises T over training (:func:`energy_threshold`): coarse updates early, precise
ones near convergence.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from psfl.codecs.base import (F32, check_consumed, from_f32_numpy, numel_of, read_f32_array, register_codec,
                              to_f32_numpy)
from psfl.codecs.bits import read_varint, varint
from psfl.utils.errors import PsflError

DENSE, FACTORS = 0, 1


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """(m, n) of the matrix view of ``shape``: (shape[0], prod(shape[1:])); None below 2-D."""
    if len(shape) < 2:
        return None
    return int(shape[0]), numel_of(shape[1:])


def svd_rank(singular_values: Tensor | np.ndarray | Sequence[float], energy: float) -> int:
    """The smallest r with sum_{i<=r} sigma_i^2 >= energy * sum_i sigma_i^2 (FedKD's energy
    threshold; singular values in descending order). 0 for a zero matrix or ``energy`` 0."""
    if not 0.0 <= energy <= 1.0:
        raise PsflError(f"svd codec: energy threshold {energy} is outside [0, 1]")
    s = np.asarray(singular_values.detach().cpu() if isinstance(singular_values, Tensor) else singular_values,
                   dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(s * s)])  # cum[r]: energy of the first r values
    # cum[-1] is the total, so energy 1 always reaches r = len(s) despite rounding
    return int(np.searchsorted(cum, energy * cum[-1], side="left"))


def energy_threshold(rnd: int, total_rounds: int, t_start: float, t_end: float) -> float:
    """FedKD's dynamic energy threshold for round ``rnd`` (0-based) of ``total_rounds``:

        T = t_start + (t_end - t_start) * (rnd + 1) / total_rounds

    linear in the 1-based round t = rnd + 1, reaching ``t_end`` in the last round. The
    paper gives T(t) = T_start + (T_end - T_start) t / T; the authors' code (wuch15/FedKD,
    run.py: ``energy = tmin + ((1 + comm_round) / epochs) * (tmax - tmin)``, defaults
    tmin 0.95, tmax 0.98) fixes t as the 1-based round, which this follows."""
    if total_rounds < 1 or not 0 <= rnd < total_rounds:
        raise ValueError(f"energy_threshold: round {rnd} outside 0..{total_rounds - 1}")
    return t_start + (t_end - t_start) * (rnd + 1) / total_rounds


def svd_nbytes(shape: Sequence[int], rank: int | None) -> int:
    """Payload size: 1 flag byte + dense float32 values (``rank`` None), or
    1 + varint(r) + 4 r (m + n) for the factors."""
    if rank is None:
        return 1 + 4 * numel_of(shape)
    mn = matrix_shape(shape)
    if mn is None:
        raise ValueError(f"svd_nbytes: shape {tuple(shape)} has no matrix view")
    return 1 + len(varint(rank)) + 4 * rank * (mn[0] + mn[1])


def _dense(t: Tensor) -> bytes:
    return bytes([DENSE]) + to_f32_numpy(t).tobytes()


@register_codec("svd", 5)
class SVDCodec:
    """Truncated-SVD factors U_r diag(sigma_r), V_r^T at an energy threshold (FedKD)."""

    @staticmethod
    def encode(t: Tensor, energy: float) -> bytes:
        mn = matrix_shape(t.shape)
        if mn is None or mn[0] * mn[1] == 0 or not bool(torch.isfinite(t).all()):
            return _dense(t)
        m, n = mn
        w = t.detach().to("cpu", torch.float64).reshape(m, n)  # (m, n)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (m, k), (k,), (k, n); k = min(m, n)
        r = svd_rank(s, energy)
        if r * (m + n) >= m * n:  # factors no smaller than the values themselves
            return _dense(t)
        a = (u[:, :r] * s[:r]).numpy().astype(F32)  # (m, r)
        b = vh[:r].numpy().astype(F32)  # (r, n)
        return bytes([FACTORS]) + varint(r) + a.tobytes() + b.tobytes()

    @staticmethod
    def decode(payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        numel = numel_of(shape)
        if not payload or payload[0] not in (DENSE, FACTORS):
            raise PsflError("svd payload: missing or unknown flag byte")
        if payload[0] == DENSE:
            if len(payload) != 1 + 4 * numel:
                raise PsflError(f"svd payload (dense) has {len(payload) - 1} value bytes, shape {tuple(shape)} "
                                f"needs {4 * numel}")
            values, _ = read_f32_array(payload, 1, numel)
            return from_f32_numpy(values, shape, dtype)
        mn = matrix_shape(shape)
        if mn is None:
            raise PsflError(f"svd payload: factors for shape {tuple(shape)}, which has no matrix view")
        m, n = mn
        r, off = read_varint(payload, 1)
        if r > min(m, n):
            raise PsflError(f"svd payload: rank {r} exceeds min{mn} = {min(m, n)}")
        a, off = read_f32_array(payload, off, m * r)
        b, off = read_f32_array(payload, off, r * n)
        check_consumed(payload, off, "svd")
        # rebuilt in float64 and rounded to float32 once
        w = a.astype(np.float64).reshape(m, r) @ b.astype(np.float64).reshape(r, n)  # (m, n)
        return from_f32_numpy(w.astype(np.float32), shape, dtype)
