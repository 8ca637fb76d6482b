"""``stc``: sparse ternary tensors (values in {-mu, 0, +mu}) as in Sattler et al. 2019,
"Robust and communication-efficient federated learning from non-iid data".

Layout: mu (float32) | varint n (non-zeros) | byte b* | position bits | sign bits.
Positions: distances d between consecutive non-zeros (the first from index -1) are
written as d - 1 in Golomb-Rice code with divisor 2**b*, the paper's parameter

    b* = 1 + floor(log2( log(phi - 1) / log(1 - p) )),   phi = golden ratio,

with p = n / numel (clamped at 0). Then one sign bit per non-zero (1 = negative).
For geometric distances the expected position cost is the paper's

    b_pos = n * (b* + 1 / (1 - (1 - p) ** (2 ** b*)))   (:func:`stc_golomb_bits`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from psfl.codecs.base import (check_consumed, f32_bytes, from_f32_numpy, numel_of, read_f32, register_codec,
                              to_f32_numpy)
from psfl.codecs.bits import BitReader, BitWriter, read_varint, varint
from psfl.utils.errors import PsflError

PHI = (1.0 + math.sqrt(5.0)) / 2.0


def stc_golomb_parameter(p: float) -> int:
    """b* = 1 + floor(log2(log(phi - 1) / log(1 - p))), at least 0 (Sattler et al. 2019)."""
    if p <= 0.0:
        return 0
    if p >= 1.0:
        return 0
    b = 1 + math.floor(math.log2(math.log(PHI - 1.0) / math.log(1.0 - p)))
    return max(0, int(b))


def stc_golomb_bits(n_nonzero: int, numel: int) -> float:
    """Expected position bits of n non-zeros among numel: n * (b* + 1/(1 - (1-p)^(2^b*)))."""
    if n_nonzero <= 0:
        return 0.0
    p = n_nonzero / numel
    b = stc_golomb_parameter(p)
    return n_nonzero * (b + 1.0 / (1.0 - (1.0 - p) ** (2 ** b)))


def stc_header_bytes(n_nonzero: int) -> int:
    """mu (4) + varint n + the b* byte."""
    return 4 + len(varint(n_nonzero)) + 1


def stc_expected_bits(n_nonzero: int, numel: int) -> float:
    """Formula size of an STC payload: Golomb position bits + sign bits + header."""
    return stc_golomb_bits(n_nonzero, numel) + n_nonzero + 8 * stc_header_bytes(n_nonzero)


@register_codec("stc", 2)
class STCCodec:
    """Sparse ternary {-mu, 0, +mu}: Golomb-coded positions, sign bits, mu (Sattler et al. 2019)."""

    @staticmethod
    def encode(t: Tensor) -> bytes:
        a = to_f32_numpy(t)
        pos = np.flatnonzero(a != 0)  # (n,)
        vals = a[pos]
        mu = float(abs(vals[0])) if pos.size else 0.0
        if not np.all(np.abs(vals) == np.float32(mu)):
            raise PsflError("stc codec: the tensor is not ternary (non-zeros differ in magnitude); "
                            "compress it with topk_ternarize first")
        b = stc_golomb_parameter(pos.size / a.size) if a.size else 0
        w = BitWriter()
        w.rice(np.diff(pos, prepend=-1) - 1, b)
        w.bits(vals < 0)
        return f32_bytes(mu) + varint(pos.size) + bytes([b]) + w.getvalue()

    @staticmethod
    def decode(payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        numel = numel_of(shape)
        mu, off = read_f32(payload, 0)
        n, off = read_varint(payload, off)
        if off >= len(payload):
            raise PsflError("stc payload: truncated header")
        b = payload[off]
        off += 1
        r = BitReader(memoryview(payload)[off:])
        pos = np.cumsum(r.rice(n, b) + 1) - 1
        neg = r.bits(n).astype(bool)
        check_consumed(payload, off + r.bytes_consumed, "stc")
        if n and pos[-1] >= numel:
            raise PsflError(f"stc payload: position {int(pos[-1])} outside a tensor of {numel} elements")
        out = np.zeros(numel, dtype=np.float32)
        m = np.float32(mu)
        out[pos] = np.where(neg, -m, m)
        return from_f32_numpy(out, shape, dtype)
