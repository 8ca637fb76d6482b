"""Differentiable physical channel, Eq. 6: Y = H X + N.

Symbols ``X`` arrive as a real tensor ``(B, ..., c)``. Each sample is normalised to unit
average power per real symbol, so the requested SNR (in dB, converted with
10^(dB/10)) fixes the noise variance: sigma^2 = 1 / psi. SNR is given per batch (a float)
or per sample (a ``(B,)`` tensor). Every random draw comes from the ``generator`` passed in.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from psfl.registry import Registry


def db_to_linear(snr_db: Tensor | float) -> Tensor | float:
    """SNR in dB -> linear ratio psi = 10^(dB/10). Never use dB as a linear ratio."""
    if isinstance(snr_db, Tensor):
        return torch.pow(10.0, snr_db / 10.0)
    return 10.0 ** (snr_db / 10.0)


def _per_sample(snr_db: Tensor | float, x: Tensor) -> Tensor:
    """Broadcastable (B, 1, ..., 1) linear SNR for ``x``."""
    s = torch.as_tensor(snr_db, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"snr_db must be a float or a ({x.shape[0]},) tensor, got {tuple(s.shape)}")
    return db_to_linear(s).view(-1, *([1] * (x.ndim - 1)))


def power_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each sample to unit average power per real symbol."""
    dims = tuple(range(1, x.ndim))
    power = x.pow(2).mean(dim=dims, keepdim=True)
    return x * torch.rsqrt(power + eps)


class Channel(nn.Module):
    """Base: ``forward(x, snr_db, generator) -> (X_normalised, Y)``."""

    def forward(
        self, x: Tensor, snr_db: Tensor | float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


CHANNELS: Registry[type[Channel]] = Registry("channel")


def create_channel(name: str, **kwargs) -> Channel:
    return CHANNELS.get(name)(**kwargs)


@CHANNELS.register("awgn")
class AWGN(Channel):
    """H = 1: Y = X + N, N ~ N(0, 1/psi) per real symbol."""

    def forward(self, x, snr_db, generator=None):
        X = power_normalize(x)
        psi = _per_sample(snr_db, X)
        noise = torch.randn(X.shape, generator=generator, dtype=X.dtype, device=X.device)
        return X, X + noise * torch.rsqrt(psi)
