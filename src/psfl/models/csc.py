"""CSC model (the PLD student, Section V-A): ResNet-18 semantic encoder, linear channel
codec on the spatial tokens, and three transposed convolutions back to the image.

::

    m (B,C,H,W) --ResNet-18 trunk (torchvision BasicBlocks, no pool/fc)--> (B, D, h, w)
      --flatten--> S (B, L = h*w, D)
    S --channel_encoder D->c (bias-free, per token)--> X --channel (Eq. 6)--> Y
    Y --channel_decoder c->D (bias-free)--> C (B, L, D) --reshape--> (B, D, h, w)
      --ConvT(s1) ReLU ConvT(s2) ReLU ConvT(s3)--> (B, C_in, h*s, w*s) --centre crop--> m_hat

Stem. Inputs of at most ``small_stem_max`` (64) pixels use the CIFAR-style stem (3x3
stride-1 conv, no max-pool), so the trunk has stride 8 (28 -> 4x4 and 32 -> 4x4 tokens);
larger inputs use torchvision's stem (7x7 stride-2 conv + max-pool), stride 32
(224 -> 7x7). Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1..4``), so a
torchvision ``resnet18`` state dict (minus ``fc``) loads into the standard-stem trunk.

Decoder. The three transposed convolutions have strides whose product is the trunk's
stride: (2, 2, 2) for the small stem, (4, 4, 2) for the standard one, each with kernel
2s and padding s/2, which multiplies the size by exactly s. The result is at least the
input size (ResNet rounds odd sizes up: 28 -> 14 -> 7 -> 4 -> x8 = 32) and is centre-
cropped to the input (28: 2 pixels per side; 32 and 224: no crop).

paper-CSC (224x224x3), matching Table I's 54,721,065 parameters:

- ResNet-18 trunk (no fc):                         11,176,512
- channel codec 512 -> 512 -> 512, bias-free:      2 x 262,144 = 524,288
- ConvT 512 -> 1024, k 8, s 4 (7 -> 28):           33,554,432 + 1,024
- ConvT 1024 -> 144, k 8, s 4 (28 -> 112):          9,437,184 + 144
- ConvT 144 -> 3,   k 4, s 2 (112 -> 224):              6,912 + 3
- total                                            54,700,499 (-0.038 % vs Table I)

The deconvolution widths (1024, 144) were chosen as the round widths that bring the
total closest to Table I; the paper does not give its decoder's layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

from psfl.channel import create_channel
from psfl.models.base import SCModel


@dataclass(frozen=True)
class CSCConfig:
    """Architecture of a CSC model. Defaults: the paper-CSC layout (module docstring)."""

    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # ResNet-18 stage widths; D = widths[-1]
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    stem_width: int | None = None  # None: widths[0]
    channel_dim: int = 512  # c
    deconv_channels: tuple[int, int] = (1024, 144)
    small_stem_max: int = 64  # inputs <= this many pixels use the 3x3 stride-1 stem
    channel: str = "awgn"


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class CSCModel(SCModel):
    """Conventional semantic-communication model: ResNet-18 + three deconvolutions."""

    family = "csc"
    # NHWC: oneDNN's narrow convolutions train 13-28 % faster per step than in NCHW on
    # AVX-512 and on AVX2 kernels (benchmarks/kernel_options.py, results/profile/); but
    # the cpu and tiny presets' narrow strided 1x1 downsamples corrupt the heap there,
    # so they stay NCHW (psfl.utils.device.nhwc_trains_safely)
    nhwc = True

    def __init__(self, cfg: CSCConfig = CSCConfig(), img_size: int = 224, in_chans: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size, self.in_chans = img_size, in_chans
        self.sem_dim, self.channel_dim = cfg.widths[-1], cfg.channel_dim
        stem = cfg.stem_width or cfg.widths[0]
        small = img_size <= cfg.small_stem_max

        # semantic encoder: ResNet-18 trunk with torchvision names
        if small:
            self.conv1 = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
            n = img_size
        else:
            self.conv1 = nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            n = _conv_out(_conv_out(img_size, 7, 2, 3), 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], stem
        for i, (width, nblocks) in enumerate(zip(cfg.widths, cfg.blocks)):
            stride = 1 if i == 0 else 2
            layer, inplanes = self._make_layer(inplanes, width, nblocks, stride)
            stages.append(layer)
            n = _conv_out(n, 3, stride, 1)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.grid = (n, n)
        self.trunk_stride = 8 if small else 32

        # channel codec: alpha (Eq. 5) and beta (Eq. 7), per spatial token
        self.channel_encoder = nn.Linear(self.sem_dim, cfg.channel_dim, bias=False)
        self.channel = create_channel(cfg.channel)
        self.channel_decoder = nn.Linear(cfg.channel_dim, self.sem_dim, bias=False)

        # semantic decoder: three transposed convolutions, total stride = trunk stride
        strides = (2, 2, 2) if small else (4, 4, 2)
        chans = (self.sem_dim, *cfg.deconv_channels, in_chans)
        layers: list[nn.Module] = []
        for i, s in enumerate(strides):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 2 * s, s, s // 2))
            if i < len(strides) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*layers)
        out = n * self.trunk_stride
        if out < img_size:  # cannot happen with ceil-rounding convs; guard the crop below
            raise ValueError(f"CSC decoder output {out} px is smaller than the input {img_size} px")
        self._crop = (out - img_size) // 2
        self._init_weights()

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(inplanes, planes, stride, downsample)]
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers), planes

    def _init_weights(self) -> None:
        """torchvision's ResNet initialisation (Kaiming fan-out convs, unit BatchNorms);
        PyTorch defaults for the linear codec and the deconvolutions."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def semantic_encode(self, x, generator=None, mask_ratio=0.0):
        if mask_ratio > 0:
            raise ValueError("the CSC model has no masking; mask_ratio must be 0")
        t = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        t = self.layer4(self.layer3(self.layer2(self.layer1(t))))  # (B, D, h, w)
        return t.flatten(2).transpose(1, 2), {}  # S: (B, L, D)

    def semantic_decode(self, C, ctx):
        B, L, D = C.shape
        t = C.transpose(1, 2).reshape(B, D, *self.grid)  # (B, D, h, w)
        t = self.decoder(t)  # (B, C_in, h*stride, w*stride)
        c = self._crop
        if c or t.shape[-1] != self.img_size:
            t = t[..., c:c + self.img_size, c:c + self.img_size]
        return t  # (B, C_in, H, W)
