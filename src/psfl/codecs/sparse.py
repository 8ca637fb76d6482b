"""``sparse``: a tensor with exact zeros (a pruned model), losslessly.

Layout: ``flag`` byte, the variant's header, the position bits (byte-padded), then the
non-zero values as float32 in position order. The encoder computes the exact size of
every variant from the positions alone and writes the cheapest (first on ties):

=====  ============  ==========================================================
flag   variant       positions
=====  ============  ==========================================================
0      ``bitmask``   one bit per element (numel bits; nnz = popcount)
1      ``positions`` varint nnz, each index in ceil(log2 numel) bits
2      ``gamma``     varint nnz, gaps d = i_j - i_{j-1} >= 1 (i_{-1} = -1), Elias gamma
3      ``rice``      byte k, varint nnz, gaps d - 1 Golomb-Rice (divisor 2**k), best k
=====  ============  ==========================================================

"Zero" means ``x == 0`` (so -0.0 decodes as +0.0; NaN and inf are values).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from psfl.codecs.base import (F32, ceil_log2, check_consumed, from_f32_numpy, numel_of, read_f32_array,
                              register_codec, to_f32_numpy)
from psfl.codecs.bits import BitReader, BitWriter, floor_log2, gamma_bits, read_varint, rice_bits, varint
from psfl.utils.errors import PsflError

SPARSE_VARIANTS = ("bitmask", "positions", "gamma", "rice")


def _gaps(pos: np.ndarray) -> np.ndarray:
    return np.diff(pos, prepend=-1)  # (nnz,) >= 1


def best_rice_k(x: np.ndarray) -> int:
    """The Rice parameter k minimising the coded length of the integers ``x >= 0``."""
    if not x.size:
        return 0
    kmax = int(floor_log2(np.array([max(int(x.max()), 1)]))[0]) + 1
    sizes = [rice_bits(x, k) for k in range(kmax + 1)]
    return int(np.argmin(sizes))


def _variant_nbytes(numel: int, pos: np.ndarray) -> dict[str, int]:
    nnz = pos.size
    d = _gaps(pos)
    head = 1 + len(varint(nnz))  # flag + nnz
    values = 4 * nnz
    k = best_rice_k(d - 1)
    return {
        "bitmask": 1 + (numel + 7) // 8 + values,
        "positions": head + (nnz * ceil_log2(numel) + 7) // 8 + values,
        "gamma": head + (gamma_bits(d) + 7) // 8 + values,
        "rice": head + 1 + (rice_bits(d - 1, k) + 7) // 8 + values,
    }


def sparse_variant_nbytes(t: Tensor) -> dict[str, int]:
    """Exact encoded size in bytes of ``t`` under each sparse variant."""
    a = to_f32_numpy(t)
    return _variant_nbytes(a.size, np.flatnonzero(a != 0))


def sparse_nbytes(t: Tensor) -> int:
    """Size of the ``sparse`` encoding of ``t`` (the cheapest variant)."""
    return min(sparse_variant_nbytes(t).values())


@register_codec("sparse", 1)
class SparseCodec:
    """Exact zeros as the cheaper of a bitmask or coded positions, plus float32 values."""

    @staticmethod
    def encode(t: Tensor, variant: str | None = None) -> bytes:
        a = to_f32_numpy(t)
        pos = np.flatnonzero(a != 0)  # (nnz,)
        if variant is None:
            sizes = _variant_nbytes(a.size, pos)
            variant = min(SPARSE_VARIANTS, key=lambda v: sizes[v])
        if variant not in SPARSE_VARIANTS:
            raise PsflError(f"sparse codec: unknown variant {variant!r}; known: {', '.join(SPARSE_VARIANTS)}")
        flag = SPARSE_VARIANTS.index(variant)
        head = bytearray([flag])
        w = BitWriter()
        if variant == "bitmask":
            w.bits(a != 0)
        else:
            d = _gaps(pos)
            if variant == "rice":
                k = best_rice_k(d - 1)
                head.append(k)
            head += varint(pos.size)
            if variant == "positions":
                w.fixed(pos, ceil_log2(a.size))
            elif variant == "gamma":
                w.gamma(d)
            else:
                w.rice(d - 1, k)
        return bytes(head) + w.getvalue() + a[pos].astype(F32).tobytes()

    @staticmethod
    def decode(payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        numel = numel_of(shape)
        if not payload or payload[0] >= len(SPARSE_VARIANTS):
            raise PsflError("sparse payload: missing or unknown variant flag")
        variant = SPARSE_VARIANTS[payload[0]]
        off = 1
        if variant == "bitmask":
            r = BitReader(memoryview(payload)[off:])
            pos = np.flatnonzero(r.bits(numel))
        else:
            k = 0
            if variant == "rice":
                k = payload[off]
                off += 1
            nnz, off = read_varint(payload, off)
            r = BitReader(memoryview(payload)[off:])
            if variant == "positions":
                pos = r.fixed(nnz, ceil_log2(numel))
            elif variant == "gamma":
                pos = np.cumsum(r.gamma(nnz)) - 1
            else:
                pos = np.cumsum(r.rice(nnz, k) + 1) - 1
            if nnz and (pos[-1] >= numel):
                raise PsflError(f"sparse payload: position {int(pos[-1])} outside a tensor of {numel} elements")
        off += r.bytes_consumed
        values, off = read_f32_array(payload, off, pos.size)
        check_consumed(payload, off, "sparse")
        out = np.zeros(numel, dtype=np.float32)
        out[pos] = values
        return from_f32_numpy(out, shape, dtype)
