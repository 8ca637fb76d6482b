"""uint8 arrays -> normalised float32 model inputs, once per (dataset, input preset).

``prepare(ds, spec)`` converts whole splits in chunks (resize with antialiasing when the
preset size differs, grey -> RGB when the preset asks 3 channels, scale to [0, 1], normalise
with the preset's mean/std). Results are kept in a small in-memory LRU and, with
``cache_dir``, on disk (``torch.save``) under a key made of the dataset name, a hash of its
arrays and the resolved preset.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from psfl.data.datasets import ArrayDataset
from psfl.data.spec import INPUT_PRESETS, InputSpec, ResolvedInput
from psfl.utils.errors import PsflError
from psfl.utils.fileio import atomic_path

CHUNK = 2048  # images converted at a time (bounds the temporary memory of a resize)
_CACHE_VERSION = 1  # bump when the preprocessing changes, to invalidate disk caches


@dataclass(eq=False)
class PreparedData:
    """Model-ready tensors of one dataset under one input preset."""

    name: str
    x_train: Tensor  # (N, C, H, W) float32, normalised
    y_train: Tensor  # (N,) int64
    x_test: Tensor  # (M, C, H, W)
    y_test: Tensor  # (M,)
    input: ResolvedInput
    num_classes: int


def to_model_input(x: np.ndarray, resolved: ResolvedInput, chunk: int = CHUNK) -> Tensor:
    """uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C', S, S)`` in the
    preset's normalised space (vectorised per chunk of ``chunk`` images)."""
    n = x.shape[0]
    s, c_out = resolved.size, resolved.channels
    c_in = 1 if x.ndim == 3 else x.shape[3]
    if c_in != c_out and c_in != 1:
        raise PsflError(f"input preset {resolved.name!r} asks {c_out} channels; cannot convert "
                        f"{c_in}-channel images")
    mean = torch.tensor(resolved.mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C', 1, 1)
    std = torch.tensor(resolved.std, dtype=torch.float32).view(1, -1, 1, 1)
    out = torch.empty((n, c_out, s, s), dtype=torch.float32)  # (N, C', S, S)
    for i in range(0, n, chunk):
        xb = torch.from_numpy(np.array(x[i:i + chunk])).float().div_(255.0)  # copy: x is read-only
        xb = xb.unsqueeze(1) if xb.ndim == 3 else xb.permute(0, 3, 1, 2)  # (b, C, H, W)
        if xb.shape[-1] != s or xb.shape[-2] != s:
            xb = F.interpolate(xb, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        xb = xb.expand(-1, c_out, -1, -1)  # grey -> RGB by repeating (a view)
        torch.sub(xb, mean, out=out[i:i + chunk]).div_(std)
    return out


def denormalize(x: Tensor, resolved: ResolvedInput) -> Tensor:
    """Model-space images ``(..., C, H, W)`` -> pixels in [0, 1] (for PSNR/SSIM, plots)."""
    mean = x.new_tensor(resolved.mean).view(-1, 1, 1)  # (C, 1, 1)
    std = x.new_tensor(resolved.std).view(-1, 1, 1)
    return (x * std + mean).clamp_(0.0, 1.0)


def resolve_for(ds: ArrayDataset, spec: InputSpec | str) -> ResolvedInput:
    """Resolve an input preset (object or name) against the dataset's native size/channels."""
    if isinstance(spec, str):
        try:
            spec = INPUT_PRESETS.get(spec)
        except KeyError as e:
            raise PsflError(str(e.args[0])) from None
    info = ds.info
    try:
        return spec.resolve(info.size, info.channels)
    except ValueError as e:
        raise PsflError(str(e)) from None


# --------------------------------------------------------------------------- caches
_MEMORY: OrderedDict[tuple, tuple[ArrayDataset, PreparedData]] = OrderedDict()
_MEMORY_MAX = 4


def cache_key(ds: ArrayDataset, resolved: ResolvedInput) -> str:
    """Disk-cache file stem: dataset name + hash of (arrays, resolved preset, version)."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{ds.fingerprint()}|{resolved!r}|v{_CACHE_VERSION}".encode())
    return f"{ds.name}-{resolved.name}-{h.hexdigest()}"


def _load_disk(path: Path, ds: ArrayDataset, resolved: ResolvedInput) -> PreparedData | None:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or partial cache file: rebuild it
        return None
    return PreparedData(ds.name, d["x_train"], d["y_train"], d["x_test"], d["y_test"], resolved,
                        ds.num_classes)


def _save_disk(path: Path, p: PreparedData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # readers never see a half-written file
        torch.save({k: getattr(p, k) for k in ("x_train", "y_train", "x_test", "y_test")}, tmp)


def prepare(ds: ArrayDataset, spec: InputSpec | str, cache_dir: str | Path | None = None) -> PreparedData:
    """Preprocess both splits of ``ds`` for the input preset ``spec`` (cached).

    Memory: ``4 * N * C * S * S`` bytes per split (imagenet224 on 60000 images is ~36 GB)."""
    resolved = resolve_for(ds, spec)
    key = (id(ds), resolved)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key][1]
    path = Path(cache_dir).expanduser() / f"{cache_key(ds, resolved)}.pt" if cache_dir else None
    prepared = _load_disk(path, ds, resolved) if path is not None and path.is_file() else None
    if prepared is None:
        prepared = PreparedData(
            ds.name,
            to_model_input(ds.x_train, resolved), torch.from_numpy(np.array(ds.y_train, np.int64)),
            to_model_input(ds.x_test, resolved), torch.from_numpy(np.array(ds.y_test, np.int64)),
            resolved, ds.num_classes,
        )
        if path is not None:
            _save_disk(path, prepared)
    _MEMORY[key] = (ds, prepared)  # holding ds keeps id(ds) from being reused while cached
    while len(_MEMORY) > _MEMORY_MAX:
        _MEMORY.popitem(last=False)
    return prepared


def clear_prepare_cache() -> None:
    """Forget preprocessed tensors held in memory."""
    _MEMORY.clear()
