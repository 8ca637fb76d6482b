"""``qsgd``: the exact representation of a QSGD s-level quantised tensor (FedPAQ).

Layout: flag byte, varint s, norm (float32), then one of

* flag 0 ``fixed``: every level in ceil(log2(s + 1)) bits, then one sign bit per
  non-zero level (1 = negative);
* flag 1 ``elias``: varint n (non-zero levels); Elias-gamma gaps between their
  positions (first from index -1), n sign bits, Elias-gamma levels (>= 1) -
  QSGD's recursive-Elias idea for sparse, low-level vectors.

The encoder computes both sizes exactly and writes the smaller (``fixed`` on ties).
A zero level has no sign on the wire: it dequantises to +0.0 either way.

Two entry points: :func:`encode_qsgd` / :func:`decode_qsgd` on the parts (norm, signs,
levels, s), and the registered codec on the dequantised tensor (``encode(t, s=, norm=)``),
which recovers the levels and refuses a tensor that is not ``qsgd_dequantize`` output.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from psfl.codecs.base import ceil_log2, check_consumed, f32_bytes, numel_of, read_f32, register_codec, to_f32_numpy
from psfl.codecs.bits import BitReader, BitWriter, gamma_bits, read_varint, varint
from psfl.codecs.ops import qsgd_dequantize
from psfl.utils.errors import PsflError

QSGD_VARIANTS = ("fixed", "elias")


def _parts_numpy(signs: Tensor, levels: Tensor, s: int) -> tuple[np.ndarray, np.ndarray]:
    lv = levels.detach().reshape(-1).to("cpu", torch.int64).numpy()
    sg = signs.detach().reshape(-1).to("cpu", torch.int64).numpy()
    if lv.size and (lv.min() < 0 or lv.max() > s):
        raise PsflError(f"qsgd codec: levels must lie in [0, {s}], got [{lv.min()}, {lv.max()}]")
    if np.any((lv > 0) & (sg == 0)):
        raise PsflError("qsgd codec: a non-zero level has sign 0")
    return sg, lv


def qsgd_variant_nbytes(levels: Tensor, s: int) -> dict[str, int]:
    """Exact encoded size in bytes of each QSGD variant for these levels."""
    lv = levels.detach().reshape(-1).to("cpu", torch.int64).numpy()
    nz = np.flatnonzero(lv)
    head = 1 + len(varint(int(s))) + 4
    return {
        "fixed": head + (lv.size * ceil_log2(int(s) + 1) + nz.size + 7) // 8,
        "elias": head + len(varint(nz.size))
        + (gamma_bits(np.diff(nz, prepend=-1)) + nz.size + gamma_bits(lv[nz]) + 7) // 8,
    }


def encode_qsgd(norm: float, signs: Tensor, levels: Tensor, s: int, variant: str | None = None) -> bytes:
    """Bytes of a QSGD quantisation (see the module docstring for the layout)."""
    s = int(s)
    if s < 1:
        raise PsflError(f"qsgd codec: s must be >= 1, got {s}")
    sg, lv = _parts_numpy(signs, levels, s)
    if variant is None:
        sizes = qsgd_variant_nbytes(levels, s)
        variant = min(QSGD_VARIANTS, key=lambda v: sizes[v])
    if variant not in QSGD_VARIANTS:
        raise PsflError(f"qsgd codec: unknown variant {variant!r}; known: {', '.join(QSGD_VARIANTS)}")
    nz = np.flatnonzero(lv)  # (n,)
    head = bytes([QSGD_VARIANTS.index(variant)]) + varint(s) + f32_bytes(norm)
    w = BitWriter()
    if variant == "fixed":
        w.fixed(lv, ceil_log2(s + 1))
        w.bits(sg[nz] < 0)
    else:
        head += varint(nz.size)
        w.gamma(np.diff(nz, prepend=-1))
        w.bits(sg[nz] < 0)
        w.gamma(lv[nz])
    return head + w.getvalue()


def decode_qsgd(payload: bytes, numel: int) -> tuple[float, Tensor, Tensor, int]:
    """Inverse of :func:`encode_qsgd` -> (norm, signs int8, levels int32, s), flat (numel,).

    Signs of zero levels come back as 0.
    """
    if not payload or payload[0] >= len(QSGD_VARIANTS):
        raise PsflError("qsgd payload: missing or unknown variant flag")
    variant = QSGD_VARIANTS[payload[0]]
    s, off = read_varint(payload, 1)
    norm, off = read_f32(payload, off)
    lv = np.zeros(numel, dtype=np.int64)
    if variant == "fixed":
        r = BitReader(memoryview(payload)[off:])
        lv[:] = r.fixed(numel, ceil_log2(s + 1))
        nz = np.flatnonzero(lv)
    else:
        n, off = read_varint(payload, off)
        r = BitReader(memoryview(payload)[off:])
        nz = np.cumsum(r.gamma(n)) - 1
        if n and nz[-1] >= numel:
            raise PsflError(f"qsgd payload: position {int(nz[-1])} outside a tensor of {numel} elements")
    neg = r.bits(nz.size).astype(bool)
    if variant == "elias":
        lv[nz] = r.gamma(nz.size)
    check_consumed(payload, off + r.bytes_consumed, "qsgd")
    if lv.size and lv.max() > s:
        raise PsflError(f"qsgd payload: level {int(lv.max())} above s = {s}")
    sg = np.zeros(numel, dtype=np.int8)
    sg[nz] = np.where(neg, -1, 1)
    return norm, torch.from_numpy(sg), torch.from_numpy(lv.astype(np.int32)), s


@register_codec("qsgd", 4)
class QSGDCodec:
    """QSGD s-level quantisation: norm, signs and levels, fixed-width or Elias-coded."""

    @staticmethod
    def encode(t: Tensor, s: int, norm: float, variant: str | None = None) -> bytes:
        a = to_f32_numpy(t).astype(np.float64)
        s = int(s)
        if norm > 0:
            lv = np.rint(np.abs(a) * s / norm)
        else:
            lv = np.zeros_like(a)
        levels = torch.from_numpy(lv.astype(np.int64))
        signs = torch.from_numpy(np.sign(a).astype(np.int8))
        if lv.size and (lv.max() > s or not torch.equal(qsgd_dequantize(norm, signs, levels, s),
                                                         t.detach().reshape(-1).to("cpu", torch.float32))):
            raise PsflError(f"qsgd codec: the tensor is not a QSGD quantisation with s = {s}, norm = {norm}; "
                            "quantise it with qsgd_quantize/qsgd_dequantize first (or use encode_qsgd)")
        return encode_qsgd(norm, signs, levels, s, variant)

    @staticmethod
    def decode(payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        norm, signs, levels, s = decode_qsgd(payload, numel_of(shape))
        return qsgd_dequantize(norm, signs, levels, s).reshape(tuple(shape)).to(dtype)


def _bucket_spans(numel: int, bucket: int) -> list[tuple[int, int]]:
    d = bucket or max(numel, 1)
    return [(i, min(i + d, numel)) for i in range(0, numel, d)] or [(0, 0)]


def encode_qsgd_buckets(tensors: dict[str, Tensor], s: int, bucket: int, generator: torch.Generator) -> bytes:
    """QSGD in buckets (Alistarh et al. 2017: each run of ``bucket`` consecutive elements
    of a flattened tensor is quantised with its own norm; 0 = one bucket per tensor): one
    ``qsgd`` codec entry per bucket, in key order. The stochastic rounding is drawn from
    ``generator``; the bytes store the result exactly."""
    from psfl.codecs.ops import qsgd_dequantize, qsgd_quantize
    from psfl.codecs.state import encode_state

    norms, parts = [], []
    for t in tensors.values():
        flat = t.detach().reshape(-1).float()
        for a, b in _bucket_spans(flat.numel(), bucket):
            norm, signs, levels = qsgd_quantize(flat[a:b], s, generator)
            norms.append(norm)
            parts.append(qsgd_dequantize(norm, signs, levels, s))
    return encode_state(parts, lambda i, t: ("qsgd", {"s": s, "norm": norms[int(i)]}))


def decode_qsgd_buckets(payload: bytes, like: dict[str, Tensor], bucket: int) -> dict[str, Tensor]:
    """Inverse of :func:`encode_qsgd_buckets`: float32 tensors shaped as ``like``."""
    from psfl.codecs.state import decode_state

    spans = {k: _bucket_spans(v.numel(), bucket) for k, v in like.items()}
    got = decode_state(payload, [f"{k}[{a}:{b}]" for k, sp in spans.items() for a, b in sp])
    return {k: torch.cat([got[f"{k}[{a}:{b}]"].reshape(-1) for a, b in sp]).view(like[k].shape)
            for k, sp in spans.items()}
