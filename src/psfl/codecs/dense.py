"""``dense``: raw little-endian float32, 4 bytes per element, no header."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from psfl.codecs.base import from_f32_numpy, numel_of, read_f32_array, register_codec, to_f32_numpy
from psfl.utils.errors import PsflError


@register_codec("dense", 0)
class DenseCodec:
    """Raw little-endian float32 (4 bytes per element)."""

    @staticmethod
    def encode(t: Tensor) -> bytes:
        return to_f32_numpy(t).tobytes()

    @staticmethod
    def decode(payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        n = numel_of(shape)
        if len(payload) != 4 * n:
            raise PsflError(f"dense payload has {len(payload)} bytes, shape {tuple(shape)} needs {4 * n}")
        values, _ = read_f32_array(payload, 0, n)
        return from_f32_numpy(values, shape, dtype)


def dense_nbytes(numel: int) -> int:
    return 4 * int(numel)
