"""Output contract and registry shared by every semantic-communication model.

Every model (GSC = ViT/MAE, CSC = ResNet-18 + deconvs) maps an image through

    m --S(.)--> S --C(.)--> X --channel--> Y --C^-1(.)--> C --S^-1(.)--> m_hat

(Eqs. 5-7) and returns an :class:`SCOutput`. ``S`` and ``C`` are token sequences
``(B, L, D)`` laid on a spatial ``grid`` (h, w) with L = h*w, so that PLD's Eq. 19 can
compare a mentor's and a student's encodings (see psfl.fl.pld for the bridge between
different widths/grids).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from psfl.registry import Registry


@dataclass
class SCOutput:
    S: Tensor  # semantic encoding, (B, L, D) patch/spatial tokens (no cls token)
    X: Tensor  # transmitted channel symbols, (B, L, c), power-normalised by the channel
    Y: Tensor  # received symbols, (B, L, c)
    C: Tensor  # channel-decoder output, (B, L, D), same shape as S
    x_hat: Tensor  # reconstruction m_hat, (B, C_in, H, W), in the model's input space
    grid: tuple[int, int]  # (h, w) with h * w == L
    mask: Tensor | None = None  # MAE: (B, L) 1 = masked patch (only when mask_ratio > 0)
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str  # "gsc" or "csc"
    input_preset: str  # key into psfl.data.spec.INPUT_PRESETS
    build: Callable[..., nn.Module]  # build(img_size=, in_chans=, **overrides) -> model
    description: str = ""


MODELS: Registry[ModelPreset] = Registry("model preset")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
