"""Model states on the wire: the bytes a method actually sends.

* :func:`encode_model` / :func:`decode_model` — an upload or broadcast of the
  floating-point state entries as dense float32.
* :func:`encode_masked` / :func:`decode_masked` — AGP's broadcast: the pruning mask as
  one bit per prunable weight (the client must know it to hold it during training; a
  kept weight may be exactly zero, so the mask cannot be inferred from the values)
  followed by the kept values only (:func:`encode_kept`).
* :func:`encode_kept` / :func:`decode_kept` — an upload under a mask both ends hold
  (PSFL's clients got it with the broadcast): the kept values only, no positions.

Integer buffers (BatchNorm's ``num_batches_tracked``) never travel: they carry no
model information.
"""
from __future__ import annotations

import struct

import numpy as np
import torch
from torch import Tensor

from psfl.codecs import decode_state, encode_state
from psfl.utils.errors import PsflError


def wire_keys(state: dict[str, Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def encode_model(state: dict[str, Tensor]) -> bytes:
    keys = wire_keys(state)
    return encode_state({k: state[k].detach().float().contiguous() for k in keys}, lambda name, t: ("dense", {}))


def check_shape(t: Tensor, like: Tensor, key: str) -> Tensor:
    """``t`` if its shape is ``like``'s (a payload is never silently reshaped), cast to its dtype."""
    if tuple(t.shape) != tuple(like.shape):
        raise PsflError(f"payload entry {key!r} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    return t.to(like.dtype)


def decode_like(payload: bytes, template: dict[str, Tensor], keys: list[str] | None = None) -> dict[str, Tensor]:
    """The ``keys`` (default: the floating-point entries of ``template``) decoded from
    ``payload``, each with exactly its template's shape (else :class:`PsflError`) and dtype."""
    keys = wire_keys(template) if keys is None else list(keys)
    got = decode_state(payload, keys)
    return {k: check_shape(got[k], template[k], k) for k in keys}


def decode_model(payload: bytes, template: dict[str, Tensor]) -> dict[str, Tensor]:
    """Floating-point entries decoded from ``payload``; shapes (checked) and dtypes from ``template``."""
    return decode_like(payload, template)


def encode_kept(state: dict[str, Tensor], mask: dict[str, Tensor]) -> bytes:
    """The floating-point entries of ``state`` with only the kept values of the masked
    ones (in flat order); the receiver knows ``mask``. Values at pruned positions are
    not sent (the sender holds them at zero)."""
    values = {}
    for k in wire_keys(state):
        v = state[k].detach().float()
        values[k] = v.reshape(-1)[mask[k].reshape(-1).bool().to(v.device)].contiguous() if k in mask \
            else v.contiguous()
    return encode_state(values, lambda name, t: ("dense", {}))


def decode_kept(payload: bytes, template: dict[str, Tensor], mask: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`encode_kept`: pruned positions come back as zeros. A payload
    whose kept-value count does not match ``mask`` is refused."""
    keys = wire_keys(template)
    got = decode_state(payload, keys)
    state = {}
    for k in keys:
        if k in mask:
            keep = mask[k].reshape(-1).bool().cpu()
            if got[k].numel() != int(keep.sum()):
                raise PsflError(f"masked payload: entry {k!r} has {got[k].numel()} values for "
                                f"{int(keep.sum())} kept positions")
            full = torch.zeros(template[k].numel(), dtype=torch.float32)
            full[keep] = got[k].reshape(-1)
            state[k] = full.view_as(template[k]).to(template[k].dtype)
        else:
            state[k] = check_shape(got[k], template[k], k)
    return state


def encode_masked(state: dict[str, Tensor], mask: dict[str, Tensor]) -> bytes:
    """Mask bits (prunable entries, in ``mask`` order) + :func:`encode_kept`."""
    bits = np.packbits(torch.cat([mask[k].reshape(-1).cpu() for k in mask]).numpy().astype(bool))
    return struct.pack("<I", bits.size) + bits.tobytes() + encode_kept(state, mask)


def decode_masked(payload: bytes, template: dict[str, Tensor], mask_keys: list[str]
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Inverse of :func:`encode_masked` -> (state, mask)."""
    (nbytes,) = struct.unpack_from("<I", payload, 0)
    total = sum(template[k].numel() for k in mask_keys)
    flat = np.unpackbits(np.frombuffer(payload, np.uint8, nbytes, offset=4), count=total)
    mask, i = {}, 0
    for k in mask_keys:
        n = template[k].numel()
        mask[k] = torch.from_numpy(flat[i:i + n].astype(np.float32)).view_as(template[k])
        i += n
    return decode_kept(payload[4 + nbytes:], template, mask), mask
