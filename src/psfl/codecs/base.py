"""The tensor codec interface and its registry.

A codec turns ONE tensor into real bytes and back::

    payload = codec.encode(t, **params)              # bytes
    t_hat   = codec.decode(payload, shape, dtype)    # Tensor of ``shape``

The shape is NOT inside the payload (the state container :mod:`psfl.codecs.state`
writes it once per tensor); everything else a decoder needs (scales, levels, the
chosen variant) is. Values travel as little-endian float32, so decoding is exact for
float32 inputs (float64 inputs are rounded to float32 once, at encode time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from psfl.utils.errors import PsflError
from psfl.utils.registry import Registry

F32 = np.dtype("<f4")

EncodeFn = Callable[..., bytes]
DecodeFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Codec:
    name: str
    id: int  # the one byte that names the codec on the wire
    encode: EncodeFn  # (t: Tensor, **params) -> bytes
    decode: DecodeFn  # (payload: bytes, shape, dtype=torch.float32) -> Tensor
    description: str = ""


CODECS: Registry[Codec] = Registry("codec")
_BY_ID: dict[int, Codec] = {}


def register_codec(name: str, id: int, description: str = "") -> Callable[[type], type]:
    """Class decorator: the class provides static ``encode`` and ``decode``."""

    def deco(cls: type) -> type:
        if id in _BY_ID:
            raise KeyError(f"codec id {id} is used twice ({_BY_ID[id].name!r}, {name!r})")
        codec = Codec(name, id, cls.encode, cls.decode, description or (cls.__doc__ or "").strip())
        CODECS.register(name)(codec)
        _BY_ID[id] = codec
        return cls

    return deco


def codec_by_id(i: int) -> Codec:
    try:
        return _BY_ID[i]
    except KeyError:
        raise PsflError(f"unknown codec id {i} in payload; known: {sorted(_BY_ID)}") from None


def encode(name: str, t: Tensor, **params: Any) -> bytes:
    """Encode ``t`` with the codec registered as ``name``."""
    return CODECS.get(name).encode(t, **params)


def decode(name: str, payload: bytes, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    return CODECS.get(name).decode(payload, shape, dtype)


# ---------------------------------------------------------------------------- helpers
def to_f32_numpy(t: Tensor) -> np.ndarray:
    """Flat little-endian float32 copy of ``t`` (the wire's value type)."""
    return t.detach().reshape(-1).to("cpu", torch.float32).numpy().astype(F32, copy=False)


def numel_of(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def from_f32_numpy(a: np.ndarray, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32)).reshape(tuple(shape)).to(dtype)


def f32_bytes(x: float) -> bytes:
    return np.array([x], dtype=F32).tobytes()


def read_f32(buf: bytes | memoryview, off: int) -> tuple[float, int]:
    if off + 4 > len(buf):
        raise PsflError("truncated payload: float32 field runs past the end of the bytes")
    return float(np.frombuffer(buf, dtype=F32, count=1, offset=off)[0]), off + 4


def read_f32_array(buf: bytes | memoryview, off: int, n: int) -> tuple[np.ndarray, int]:
    if off + 4 * n > len(buf):
        raise PsflError(f"truncated payload: expected {n} float32 values, got {(len(buf) - off) // 4}")
    return np.frombuffer(buf, dtype=F32, count=n, offset=off), off + 4 * n


def check_consumed(buf: bytes | memoryview, off: int, codec: str) -> None:
    if off != len(buf):
        raise PsflError(f"{codec} payload has {len(buf) - off} unexpected trailing byte(s)")


def ceil_log2(n: int) -> int:
    """Bits needed to write any of the integers 0..n-1 (0 for n <= 1)."""
    return max(0, int(n) - 1).bit_length()
