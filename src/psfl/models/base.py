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

from psfl.utils.device import nhwc_trains_safely
from psfl.utils.registry import Registry


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
    # k/n the preset transmits when neither bandwidth_ratio nor channel_dim is given: its c
    # follows the input size (psfl.models.channel_dim_for). None: the config's fixed c.
    bandwidth_ratio: float | None = None


MODELS: Registry[ModelPreset] = Registry("model preset")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class SCModel(nn.Module):
    """Shared pipeline of every semantic-communication model (Eqs. 5-7).

    Subclasses provide the semantic codec (:meth:`semantic_encode` ->
    ``S (B, L, D)`` and :meth:`semantic_decode`), and set ``channel_encoder``
    (bias-free ``Linear(D, c)``, the alpha of Eq. 5) and ``channel_decoder``
    (bias-free ``Linear(c, D)``, the beta of Eq. 7), or identities when the semantic
    codec's own last layer emits the c channel symbols (DeepJSCC). ``model.channel`` is a plain
    replaceable attribute (any :class:`psfl.channel.Channel`).

    Attributes every model records: ``family`` ("gsc"/"csc"), ``sem_dim`` (D),
    ``channel_dim`` (c), ``grid`` (h, w), ``img_size``, ``in_chans``; from them
    ``channel_symbols`` (L c real symbols per image) and ``bandwidth_ratio`` (k/n).
    """

    family: str = ""
    preset: dict | None = None  # set by psfl.models.create_model: name + build arguments
    # whether its weights train fastest in NHWC (channels_last); ``memory_format`` says
    # the layout they train in (psfl.methods.base.ModelFactory puts the pooled models
    # there; states keep their logical layout, every codec reshapes)
    nhwc: bool = False
    sem_dim: int
    channel_dim: int
    grid: tuple[int, int]
    img_size: int
    in_chans: int
    channel_encoder: nn.Module
    channel_decoder: nn.Module
    channel: nn.Module

    def semantic_encode(self, x: Tensor, generator: torch.Generator | None,
                        mask_ratio: float) -> tuple[Tensor, dict[str, Tensor]]:
        """S(Z, theta) of Eq. 5: image (B, C, H, W) -> S (B, L, D) plus decoder context."""
        raise NotImplementedError

    def semantic_decode(self, C: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        """S^-1(., delta) of Eq. 7: C (B, L, D) -> m_hat (B, C_in, H, W)."""
        raise NotImplementedError

    @property
    def memory_format(self) -> torch.memory_format:
        """channels_last where the family trains faster in NHWC (``nhwc``) and
        :func:`nhwc_trains_safely` holds; the default layout otherwise."""
        return torch.channels_last if self.nhwc and nhwc_trains_safely(self) else torch.contiguous_format

    @property
    def channel_symbols(self) -> int:
        """Real channel symbols one image puts on the air (mask ratio 0): L x c, with
        L = h x w transmitted tokens (the shape of ``SCOutput.X`` per image)."""
        return self.grid[0] * self.grid[1] * self.channel_dim

    @property
    def bandwidth_ratio(self) -> float:
        """k/n, the bandwidth ratio of deep JSCC: complex channel symbols (two real ones
        each) per source value, (L c / 2) / (C H W). Above 1 the link expands the image."""
        return self.channel_symbols / 2 / (self.in_chans * self.img_size * self.img_size)

    def transmit(self, S: Tensor, snr_db: Tensor | float | None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Eqs. 5-7 around the channel: X = C(S, alpha), Y = H X + N, C = C^-1(Y, beta).

        ``snr_db=None`` is a noiseless link (X power-normalised, Y = X), used by
        pre-training. Returns ``(X, Y, C)`` with X, Y ``(B, L, c)`` and C ``(B, L, D)``.
        """
        z = self.channel_encoder(S)  # (B, L, c)
        if snr_db is None:
            from psfl.channel import power_normalize

            X = power_normalize(z)
            Y = X
        else:
            X, Y = self.channel(z, snr_db, generator)  # (B, L, c) each
        return X, Y, self.channel_decoder(Y)  # C: (B, L, D)

    def forward(self, x: Tensor, snr_db: Tensor | float | None, generator: torch.Generator | None = None,
                mask_ratio: float = 0.0) -> SCOutput:
        """m -> S -> X -> channel -> Y -> C -> m_hat (Eqs. 5-7)."""
        S, ctx = self.semantic_encode(x, generator, mask_ratio)  # (B, L, D)
        X, Y, C = self.transmit(S, snr_db, generator)
        x_hat = self.semantic_decode(C, ctx)  # (B, C_in, H, W)
        return SCOutput(S=S, X=X, Y=Y, C=C, x_hat=x_hat, grid=self.grid, mask=ctx.get("mask"))
