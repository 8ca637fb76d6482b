"""The state container: many tensors -> ONE ``bytes`` object (an upload / broadcast).

Per tensor, in order::

    codec id (1 byte) | ndim (varint) | shape (varints) | payload length (varint) | payload

No names travel: both sides know the keys (and their order) from the architecture.
The communicated bit count of an upload is therefore exactly ``Z = 8 * len(bytes)``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from torch import Tensor

from psfl.codecs.base import CODECS, codec_by_id
from psfl.codecs.bits import read_varint, varint
from psfl.utils.errors import PsflError

CodecChoice = Callable[[str, Tensor], "tuple[str, dict[str, Any]]"]


def always(name: str, **params: Any) -> CodecChoice:
    """A ``codec_for`` that uses one codec (with fixed params) for every tensor."""
    return lambda _key, _t: (name, dict(params))


def encode_state(tensors: Mapping[str, Tensor] | Sequence[Tensor], codec_for: CodecChoice) -> bytes:
    """Serialise tensors in order; ``codec_for(key, t) -> (codec name, params)``.

    A list is keyed "0", "1", ... for ``codec_for``.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else ((str(i), t) for i, t in enumerate(tensors))
    out = bytearray()
    for key, t in items:
        t = t.detach().cpu()  # the wire is host bytes, whatever device trained the model
        name, params = codec_for(key, t)
        codec = CODECS.get(name)
        payload = codec.encode(t, **params)
        out.append(codec.id)
        out += varint(t.dim())
        for d in t.shape:
            out += varint(int(d))
        out += varint(len(payload))
        out += payload
    return bytes(out)


def decode_state(payload: bytes, keys: Sequence[str]) -> dict[str, Tensor]:
    """Inverse of :func:`encode_state`: float32 tensors with the shapes on the wire."""
    out: dict[str, Tensor] = {}
    off = 0
    for key in keys:
        if off >= len(payload):
            raise PsflError(f"state payload ends before entry {key!r} ({len(out)} of {len(keys)} decoded)")
        codec = codec_by_id(payload[off])
        ndim, off = read_varint(payload, off + 1)
        shape = []
        for _ in range(ndim):
            d, off = read_varint(payload, off)
            shape.append(d)
        n, off = read_varint(payload, off)
        if off + n > len(payload):
            raise PsflError(f"state payload: entry {key!r} needs {n} bytes, only {len(payload) - off} left")
        out[key] = codec.decode(payload[off:off + n], tuple(shape))
        off += n
    if off != len(payload):
        raise PsflError(f"state payload has {len(payload) - off} trailing byte(s) after {len(keys)} entries")
    return out


def payload_bits(payload: bytes) -> int:
    """Z: the number of bits actually sent for ``payload``."""
    return 8 * len(payload)
