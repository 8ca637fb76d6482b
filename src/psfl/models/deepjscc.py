"""DeepJSCC (Bourtsoulatze, Kurka and Gündüz, "Deep joint source-channel coding for
wireless image transmission", IEEE TCCN 2019): the convolutional autoencoder that deep
JSCC results are quoted for, registered beside GSC and CSC as a quality anchor.

::

    m (B,C,H,W) in [0, 1]
      --conv 5x5 s2 (16) PReLU -- conv 5x5 s2 (32) PReLU -- conv 5x5 (32) PReLU
      -- conv 5x5 (32) PReLU -- conv 5x5 (c) PReLU--> (B, c, H/4, W/4) --flatten--> S (B, L, c)
    S --channel (Eq. 6: power normalisation, Y = HX + N)--> Y
    Y --reshape--> (B, c, H/4, W/4)
      --tconv 5x5 (32) PReLU -- tconv 5x5 (32) PReLU -- tconv 5x5 (32) PReLU
      -- tconv 5x5 s2 (16) PReLU -- tconv 5x5 s2 (C) sigmoid--> m_hat in [0, 1]

The encoder's last convolution emits the c channel symbols per position, so the model has
no separate linear channel codec: ``channel_encoder`` and ``channel_decoder`` are
identities (sem_dim = channel_dim = c). With ``gdn=True`` every hidden layer is followed
by GDN (encoder) or inverse GDN (decoder) before its PReLU (Ballé et al. 2016; the
variant of DeepJSCC-f, Kurka and Gündüz 2020). At 32x32x3 the L = 8 x 8 positions carry
64 c real symbols, so k/n = c / 96: c = 16 is k/n = 1/6, c = 8 is 1/12 (the ratios of the
published CIFAR-10 curves). The power normalisation is the channel's (unit average power
per real symbol); SNR is then P / sigma^2 per complex symbol, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psfl.channel import create_channel
from psfl.models.base import SCModel


@dataclass(frozen=True)
class DeepJSCCConfig:
    widths: tuple[int, int, int, int] = (16, 32, 32, 32)  # hidden conv widths (encoder; mirrored)
    channel_dim: int = 16  # c: real symbols per position (the last encoder conv's width)
    kernel: int = 5
    gdn: bool = False
    channel: str = "awgn"


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would push x up (Ballé's trick)."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


class GDN(nn.Module):
    """Generalised divisive normalisation: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)
    (``inverse``: times instead of over). beta and gamma stay non-negative through
    Ballé's reparametrisation (squared parameters above a small pedestal)."""

    PEDESTAL = 2.0 ** -36

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_bound = (beta_min + self.PEDESTAL) ** 0.5
        self.gamma_bound = self.PEDESTAL ** 0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.PEDESTAL))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.PEDESTAL))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        beta = _LowerBound.apply(self.beta, self.beta_bound) ** 2 - self.PEDESTAL
        gamma = _LowerBound.apply(self.gamma, self.gamma_bound) ** 2 - self.PEDESTAL
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta).sqrt()
        return x * norm if self.inverse else x / norm


class DeepJSCCModel(SCModel):
    """The DeepJSCC autoencoder (module docstring); inputs in [0, 1] (input preset native)."""

    family = "jscc"
    nhwc = True

    def __init__(self, cfg: DeepJSCCConfig = DeepJSCCConfig(), img_size: int = 32, in_chans: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size, self.in_chans = img_size, in_chans
        c, k, w = cfg.channel_dim, cfg.kernel, cfg.widths
        self.sem_dim = self.channel_dim = c
        pad = k // 2

        def act(ch: int, inverse: bool) -> list[nn.Module]:
            return [*([GDN(ch, inverse)] if cfg.gdn else []), nn.PReLU(ch)]

        enc: list[nn.Module] = []
        chans = (in_chans, *w, c)
        strides = (2, 2, 1, 1, 1)
        n = img_size
        for i, s in enumerate(strides):
            enc += [nn.Conv2d(chans[i], chans[i + 1], k, s, pad), *act(chans[i + 1], False)]
            n = (n + 2 * pad - k) // s + 1
        self.encoder = nn.Sequential(*enc)
        self.grid = (n, n)
        self.channel_encoder = nn.Identity()  # the last conv emits the channel symbols
        self.channel = create_channel(cfg.channel)
        self.channel_decoder = nn.Identity()
        dec: list[nn.Module] = []
        back = (c, *reversed(w), in_chans)
        for i, s in enumerate(reversed(strides)):
            dec.append(nn.ConvTranspose2d(back[i], back[i + 1], k, s, pad, output_padding=s - 1))
            if i < len(strides) - 1:
                dec += act(back[i + 1], True)
        self.decoder = nn.Sequential(*dec)
        out = n * 4
        if out < img_size:
            raise ValueError(f"DeepJSCC decoder output {out} px is smaller than the input {img_size} px")
        self._crop = (out - img_size) // 2

    def semantic_encode(self, x, generator=None, mask_ratio=0.0):
        if mask_ratio > 0:
            raise ValueError("the DeepJSCC model has no masking; mask_ratio must be 0")
        t = self.encoder(x)  # (B, c, h, w)
        return t.flatten(2).transpose(1, 2), {}  # S: (B, L, c)

    def semantic_decode(self, C, ctx):
        B, L, c = C.shape
        t = self.decoder(C.transpose(1, 2).reshape(B, c, *self.grid))  # (B, C_in, 4h, 4w)
        if self._crop or t.shape[-1] != self.img_size:
            t = t[..., self._crop:self._crop + self.img_size, self._crop:self._crop + self.img_size]
        return torch.sigmoid(t)  # (B, C_in, H, W) in [0, 1]
