"""Semantic-communication models (Section II-A, Table I): GSC (MAE ViT) mentors and the
CSC (ResNet-18) student, built by name from the :data:`MODELS` registry (core; may import
``psfl.utils`` and ``psfl.channel``).

    from psfl.models import create_model, list_models, model_info
    model = create_model("cpu-M", img_size=28, in_chans=1)
    out = model(x, snr_db=10.0, generator=g)       # SCOutput(S, X, Y, C, x_hat, grid, mask)
    create_model("paper-H", device="meta")         # 657,924,684 parameters, instantly

Every model has ``forward(x, snr_db, generator=None, mask_ratio=0.0) -> SCOutput`` and
records ``family``, ``sem_dim`` (D), ``channel_dim`` (c), ``grid``, ``img_size``,
``in_chans`` and ``preset`` (name + build arguments, used by checkpoints).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from psfl.utils.errors import PsflError
from psfl.models import presets as _presets  # noqa: F401  (registers the presets)
from psfl.models.base import MODELS, ModelPreset, SCModel, SCOutput, count_parameters
from psfl.models.checkpoints import (
    LoadReport,
    load_mae_checkpoint,
    load_model_checkpoint,
    save_model_checkpoint,
)
from psfl.models.csc import CSCConfig, CSCModel
from psfl.models.gsc import GSCConfig, GSCModel

__all__ = [
    "MODELS", "ModelPreset", "SCModel", "SCOutput", "count_parameters", "create_model", "format_ratio",
    "parse_ratio", "channel_dim_for",
    "list_models", "model_info", "model_table", "GSCConfig", "GSCModel", "CSCConfig", "CSCModel",
    "LoadReport", "load_mae_checkpoint", "load_model_checkpoint", "save_model_checkpoint",
]


def _preset(name: str) -> ModelPreset:
    try:
        return MODELS.get(name)
    except KeyError as e:
        raise PsflError(str(e.args[0])) from None


def parse_ratio(text: str | float, where: str = "bandwidth ratio") -> float:
    """``"1/6"``, ``"0.25"`` or a number -> a bandwidth ratio k/n in (0, 16]
    (:class:`PsflError` naming ``where`` otherwise)."""
    from fractions import Fraction

    try:
        r = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise PsflError(f"{where}: {text!r} is not a ratio (e.g. 1/6 or 0.25)") from None
    if not 0 < r <= 16:
        raise PsflError(f"{where}: k/n must be in (0, 16], got {text!r}")
    return r


def channel_dim_for(name: str, bandwidth_ratio: float, img_size: int | None = None,
                    in_chans: int | None = None) -> int:
    """The channel width c that makes preset ``name`` transmit ``bandwidth_ratio`` (k/n)
    at this input size: the even c nearest to 2 k/n C H W / L (L tokens per image, two
    real symbols per complex one; at least 2). The k/n reached is the model's
    ``bandwidth_ratio`` (e.g. 1/6 of a 28x28x1 image over 49 tokens: c = 6, k/n = 0.1875)."""
    # the token grid does not depend on c; c = 2 keeps the preset's own k/n out of it
    model = create_model(name, img_size=img_size, in_chans=in_chans, device="meta", channel_dim=2)
    tokens = model.grid[0] * model.grid[1]
    values = model.in_chans * model.img_size * model.img_size
    return 2 * max(1, round(bandwidth_ratio * values / tokens))


def create_model(name: str, img_size: int | None = None, in_chans: int | None = None,
                 device: torch.device | str | None = None, bandwidth_ratio: float | None = None,
                 preset_ratio: bool = True, **overrides: Any) -> nn.Module:
    """Build preset ``name``. ``img_size``/``in_chans`` default to the preset's (paper:
    224/3; cpu/tiny presets take the dataset's and require them). ``overrides`` replace
    fields of the preset's config dataclass (e.g. ``channel="rayleigh"``).
    ``device="meta"`` builds without memory (for parameter counts); any other device
    builds on the CPU and then moves there, so a seeded initialisation is the same on
    every device. ``bandwidth_ratio`` (k/n) sets the channel width c by
    :func:`channel_dim_for` (recorded as the ``channel_dim`` override, so checkpoints
    rebuild the same model). Without it (and without ``channel_dim``) a preset that has
    a default k/n (``ModelPreset.bandwidth_ratio``: the cpu presets' 1/6) uses that one;
    ``preset_ratio=False`` builds the config's fixed c instead (checkpoints saved before
    presets had a default k/n)."""
    preset = _preset(name)
    if bandwidth_ratio is None and preset_ratio and "channel_dim" not in overrides:
        bandwidth_ratio = preset.bandwidth_ratio
    if bandwidth_ratio is not None:
        if "channel_dim" in overrides:
            raise PsflError(f"model preset {name!r}: give bandwidth_ratio or channel_dim, not both")
        overrides["channel_dim"] = channel_dim_for(name, bandwidth_ratio, img_size, in_chans)
    kwargs: dict[str, Any] = dict(overrides)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if in_chans is not None:
        kwargs["in_chans"] = int(in_chans)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = preset.build(**kwargs)
    else:
        model = preset.build(**kwargs)
        if device is not None:
            model.to(device)
    model.preset = {"name": name, "img_size": model.img_size, "in_chans": model.in_chans,
                    "overrides": dict(overrides)}
    return model


def format_ratio(r: float) -> str:
    """A bandwidth ratio as people quote it: ``1/6`` when within 1 % of a unit fraction,
    else three significant digits (``2.00``, ``0.163``)."""
    if 0 < r < 1 and abs(1 / r - round(1 / r)) <= 0.01 / r:
        return f"1/{round(1 / r)}"
    return f"{r:.3g}" if r < 1 else f"{r:.2f}"


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style ``pattern`` (e.g. ``"cpu-*"``)."""
    return MODELS.names(pattern)


def model_info(name: str, img_size: int | None = None, in_chans: int | None = None,
               bandwidth_ratio: float | None = None) -> dict[str, Any]:
    """Name, family, trainable parameter count, input preset, sizes and widths of a preset,
    and what one image costs on the air: ``channel_symbols`` (real) and ``bandwidth_ratio``
    (k/n, complex symbols per source value), at ``bandwidth_ratio`` if given (else the
    preset's own).
    Built on the meta device (instant, no memory). Native-size presets are counted at
    28x28x1 unless ``img_size``/``in_chans`` are given."""
    preset = _preset(name)
    native = preset.input_preset == "native"
    if native:
        img_size, in_chans = img_size or 28, in_chans or 1
    model = create_model(name, img_size=img_size, in_chans=in_chans, device="meta",
                         bandwidth_ratio=bandwidth_ratio)
    return {"name": name, "family": preset.family, "params": count_parameters(model),
            "input_preset": preset.input_preset, "img_size": model.img_size, "in_chans": model.in_chans,
            "sem_dim": model.sem_dim, "channel_dim": model.channel_dim, "grid": list(model.grid),
            "channel_symbols": model.channel_symbols, "bandwidth_ratio": model.bandwidth_ratio,
            "description": preset.description}


def model_table(pattern: str = "*", img_size: int | None = None, in_chans: int | None = None,
                bandwidth_ratio: float | None = None) -> list[dict[str, Any]]:
    """:func:`model_info` for every preset matching ``pattern`` (native-size presets
    counted at ``img_size``/``in_chans``, default 28x28x1), ordered M, L, H, CSC within
    each family prefix, plus ``ratio_vs_M``: the count relative to the ``M`` preset of the
    same prefix (e.g. ``cpu-L`` / ``cpu-M``), None when the prefix has no M."""
    names = list_models(pattern)
    if not names:
        raise PsflError(f"no model preset matches {pattern!r}; known: {', '.join(list_models())}")
    tiers = ["M", "L", "H", "CSC"]

    def order(n: str) -> tuple[str, int, str]:
        prefix, _, tier = n.rpartition("-")
        return prefix, tiers.index(tier) if tier in tiers else len(tiers), tier

    def info(n: str) -> dict[str, Any]:
        native = MODELS.get(n).input_preset == "native"
        return model_info(n, img_size, in_chans, bandwidth_ratio) if native else model_info(n, None, None,
                                                                                           bandwidth_ratio)

    rows = [info(n) for n in sorted(names, key=order)]
    for r in rows:
        ref = f"{r['name'].rpartition('-')[0]}-M"
        r["ratio_vs_M"] = r["params"] / info(ref)["params"] if ref in MODELS else None
    return rows
