"""Differentiable physical channel, Eq. 6: Y = H X + N.

Symbols ``X`` arrive as a real tensor ``(B, ..., c)``. Each sample is normalised to unit
average power per real symbol, so the requested SNR (in dB, converted with
10^(dB/10)) fixes the noise variance: sigma^2 = 1 / psi. SNR is given per batch (a float)
or per sample (a ``(B,)`` tensor). Every random draw comes from the ``generator`` passed in,
made on the generator's device (CPU) and then moved to the symbols' device, so a seed gives
the same noise and gains on the CPU and on a GPU (:func:`psfl.utils.device.randn`).

Channels (registry :data:`CHANNELS`):

- ``awgn`` (the paper's channel, Section V-A): H = 1.
- ``rayleigh`` / ``rician`` (beyond the paper): block fading. Adjacent real symbols are
  paired into complex symbols, ``(B, ..., c) -> (B, ..., c/2)`` complex (c must be even),
  and each sample gets one complex gain h (constant over the block). Unit mean power
  E|h|^2 = 1, so the *average* received SNR equals the requested one. The receiver has
  perfect CSI and equalises with ``equalize`` = ``"mmse"`` (default), ``"zf"`` or
  ``"none"`` (see :data:`EQUALIZERS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from psfl.utils.device import randn
from psfl.utils.registry import Registry


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
        noise = randn(tuple(X.shape), generator, X.dtype, X.device)
        return X, X + noise * torch.rsqrt(psi)


# ----------------------------------------------------------------------------- fading
def to_complex(x: Tensor) -> Tensor:
    """Pair adjacent real symbols: (B, ..., c) real -> (B, ..., c/2) complex."""
    if x.shape[-1] % 2:
        raise ValueError(f"fading channels pair real symbols: last dim must be even, got {x.shape[-1]}")
    return torch.view_as_complex(x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2).contiguous())


def to_real(z: Tensor) -> Tensor:
    """Inverse of :func:`to_complex`: (B, ..., c/2) complex -> (B, ..., c) real."""
    r = torch.view_as_real(z)  # (B, ..., c/2, 2)
    return r.reshape(*r.shape[:-2], r.shape[-2] * 2)


def complex_normal(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
                   device: torch.device, variance: Tensor | float = 1.0) -> Tensor:
    """CN(0, variance): real and imaginary parts i.i.d. N(0, variance / 2)."""
    re_im = randn((*shape, 2), generator, dtype, device)
    scale = torch.sqrt(torch.as_tensor(variance, dtype=dtype, device=device) / 2)
    return torch.view_as_complex(re_im) * scale


def _eq_none(Y: Tensor, h: Tensor, noise_var: Tensor) -> Tensor:
    return Y


def _eq_zf(Y: Tensor, h: Tensor, noise_var: Tensor) -> Tensor:
    """Zero forcing Y / h = X + N / h: unbiased, noise enhanced in deep fades."""
    return Y / h


def _eq_mmse(Y: Tensor, h: Tensor, noise_var: Tensor) -> Tensor:
    """Linear MMSE h* Y / (|h|^2 + sigma^2 / E|X|^2), with E|X|^2 = 2 per complex symbol:
    bounded in deep fades (shrinks towards 0 instead of amplifying noise)."""
    return h.conj() * Y / (h.abs().pow(2) + noise_var / 2)


EQUALIZERS: Registry[Callable[[Tensor, Tensor, Tensor], Tensor]] = Registry("equalizer")
EQUALIZERS.register("none")(_eq_none)
EQUALIZERS.register("zf")(_eq_zf)
EQUALIZERS.register("mmse")(_eq_mmse)


@dataclass
class FadingOutput:
    X: Tensor  # (B, ..., c) power-normalised transmitted symbols (real)
    Y: Tensor  # (B, ..., c) received (equalised unless equalize="none") symbols (real)
    h: Tensor  # (B,) complex gain per sample
    noise: Tensor  # (B, ..., c/2) complex noise N (before equalisation)


class FadingChannel(Channel):
    """Block fading Y = h X + N on complex symbols (one h per sample), perfect CSI at
    the receiver. Subclasses implement :meth:`draw_gain`."""

    def __init__(self, equalize: str = "mmse") -> None:
        super().__init__()
        self.equalize = equalize
        self._equalizer = EQUALIZERS.get(equalize)

    def draw_gain(self, batch: int, generator: torch.Generator | None, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
        """(B,) complex gains with E|h|^2 = 1."""
        raise NotImplementedError

    def transmit(self, x: Tensor, snr_db: Tensor | float,
                 generator: torch.Generator | None = None) -> FadingOutput:
        X = power_normalize(x)  # (B, ..., c), unit power per real symbol
        Xc = to_complex(X)  # (B, ..., c/2), E|X|^2 = 2
        psi = _per_sample(snr_db, X)  # (B, 1, ..., 1), real; X.ndim == Xc.ndim
        h = self.draw_gain(X.shape[0], generator, X.dtype, X.device)  # (B,)
        hb = h.view(-1, *([1] * (Xc.ndim - 1)))
        noise_var = 2.0 / psi  # per complex symbol: 1/psi per real part
        N = complex_normal(tuple(Xc.shape), generator, X.dtype, X.device, noise_var)
        Y = self._equalizer(hb * Xc + N, hb, noise_var)
        return FadingOutput(X, to_real(Y), h, N)

    def forward(self, x, snr_db, generator=None):
        out = self.transmit(x, snr_db, generator)
        return out.X, out.Y

    def extra_repr(self) -> str:
        return f"equalize={self.equalize!r}"


@CHANNELS.register("rayleigh")
class Rayleigh(FadingChannel):
    """h ~ CN(0, 1) per sample (no line of sight)."""

    def draw_gain(self, batch, generator, dtype, device):
        return complex_normal((batch,), generator, dtype, device)


@CHANNELS.register("rician")
class Rician(FadingChannel):
    """h = sqrt(K/(K+1)) e^{j phi} + sqrt(1/(K+1)) CN(0, 1): a line-of-sight path (fixed
    phase ``los_phase``) plus Rayleigh scattering; E|h|^2 = 1. K = 0 is Rayleigh, K -> inf
    is AWGN with a phase rotation."""

    def __init__(self, k_factor: float = 3.0, los_phase: float = 0.0, equalize: str = "mmse") -> None:
        super().__init__(equalize)
        if k_factor < 0:
            raise ValueError(f"Rician K-factor must be >= 0, got {k_factor}")
        self.k_factor = float(k_factor)
        self.los_phase = float(los_phase)

    def draw_gain(self, batch, generator, dtype, device):
        K = self.k_factor
        los = math.sqrt(K / (K + 1)) * complex(math.cos(self.los_phase), math.sin(self.los_phase))
        scatter = complex_normal((batch,), generator, dtype, device, 1.0 / (K + 1))
        return scatter + los

    def extra_repr(self) -> str:
        return f"k_factor={self.k_factor}, equalize={self.equalize!r}"
