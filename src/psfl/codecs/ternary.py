"""``ternary2bit``: FTTQ's ternary weights (Xu et al. 2020, "Ternary compression for
communication-efficient federated learning").

Input: a tensor with values in {-scale_neg, 0, +scale_pos} (see
:func:`psfl.codecs.ops.ttq_quantize` / :func:`~psfl.codecs.ops.ttq_dequantize`).
Layout: flag byte (0: one shared scale, 1: scale_pos and scale_neg), the scale(s) as
float32, then 2 bits per weight packed 4 per byte (00 = 0, 01 = +, 10 = -).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from psfl.codecs.base import (check_consumed, f32_bytes, from_f32_numpy, numel_of, read_f32, register_codec,
                              to_f32_numpy)
from psfl.codecs.bits import BitReader, BitWriter
from psfl.utils.errors import PsflError


def _single(vals: np.ndarray, what: str) -> float | None:
    if not vals.size:
        return None
    v = vals[0]
    if not np.all(vals == v):
        raise PsflError(f"ternary2bit codec: the {what} values are not all equal (tensor is not ternary); "
                        "quantise it with ttq_quantize/ttq_dequantize first")
    return float(v)


def ternary2bit_nbytes(numel: int, symmetric: bool) -> int:
    return 1 + (4 if symmetric else 8) + (2 * numel + 7) // 8


@register_codec("ternary2bit", 3)
class Ternary2BitCodec:
    """Ternary weights, 2 bits each, plus one or two float32 scales (FTTQ)."""

    @staticmethod
    def encode(t: Tensor) -> bytes:
        a = to_f32_numpy(t)
        pos, neg = a > 0, a < 0
        if np.count_nonzero(a) != np.count_nonzero(pos) + np.count_nonzero(neg):
            raise PsflError("ternary2bit codec: the tensor holds NaN values")
        sp = _single(a[pos], "positive")
        sn = _single(-a[neg], "negative")
        if sp is None and sn is None:
            sp = sn = 0.0
        elif sp is None:
            sp = sn
        elif sn is None:
            sn = sp
        codes = pos.astype(np.uint8) + 2 * neg.astype(np.uint8)  # (n,) 0 / 1 = + / 2 = -
        w = BitWriter()
        w.fixed(codes, 2)
        scales = f32_bytes(sp) if sp == sn else f32_bytes(sp) + f32_bytes(sn)
        return bytes([0 if sp == sn else 1]) + scales + w.getvalue()

    @staticmethod
    def decode(payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        numel = numel_of(shape)
        if not payload or payload[0] > 1:
            raise PsflError("ternary2bit payload: missing or unknown scale flag")
        sp, off = read_f32(payload, 1)
        sn = sp
        if payload[0] == 1:
            sn, off = read_f32(payload, off)
        r = BitReader(memoryview(payload)[off:])
        codes = r.fixed(numel, 2)
        check_consumed(payload, off + r.bytes_consumed, "ternary2bit")
        if np.any(codes == 3):
            raise PsflError("ternary2bit payload: invalid 2-bit code 11")
        out = np.zeros(numel, dtype=np.float32)
        out[codes == 1] = np.float32(sp)
        out[codes == 2] = -np.float32(sn)
        return from_f32_numpy(out, shape, dtype)
