"""Classifiers that score reconstructions (the paper's pre-trained ResNet-101, Section V-B).

Registry :data:`CLASSIFIERS`: ``build(in_chans, num_classes, img_size) -> nn.Module`` taking
images in the SC models' input space (the same input preset) and returning logits.

- ``cnn`` (default): a compact VGG-style CNN for small images, fast on CPU
  (about 92 % on Fashion-MNIST after 3 epochs on 2 cores).
- ``resnet18``: torchvision ResNet-18; small-image stem (3x3 conv, no max-pool) for inputs
  of at most 64 px.
- ``resnet101``: torchvision ResNet-101 as in the paper (for GPUs or user checkpoints;
  randomly initialised here: nothing is downloaded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psfl.utils.device import module_device, to_device
from psfl.utils.registry import Registry

SMALL_IMAGE = 64  # px: at most this size counts as a "small image" (CIFAR/MNIST scale)


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    build: Callable[[int, int, int], nn.Module]  # (in_chans, num_classes, img_size) -> logits model
    description: str


CLASSIFIERS: Registry[ClassifierSpec] = Registry("classifier")


def _register(name: str, description: str):
    def deco(build: Callable[[int, int, int], nn.Module]):
        CLASSIFIERS.register(name)(ClassifierSpec(name, build, description))
        return build

    return deco


def create_classifier(arch: str, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    return CLASSIFIERS.get(arch).build(in_chans, num_classes, img_size)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _SmallImageNet(nn.Module):
    """``features`` then ``head``; inputs whose side is not ``work_size`` are first
    area-resampled to it (large presets cost what a small image costs)."""

    work_size: int
    features: nn.Module
    head: nn.Module

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        if x.shape[-1] != self.work_size:
            x = F.adaptive_avg_pool2d(x, self.work_size)
        return self.head(self.features(x))


class CompactCNN(_SmallImageNet):
    """conv(w) pool | conv(2w) conv(2w) pool | conv(4w) conv(4w) pool | dropout linear.

    Inputs above ``work_size`` px (e.g. the 224 px imagenet224 preset) are first
    area-downsampled to ``work_size`` so the cost stays that of a small image."""

    def __init__(self, in_chans: int, num_classes: int, img_size: int, width: int = 16,
                 work_size: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.work_size = img_size if img_size <= SMALL_IMAGE else work_size
        self.features = nn.Sequential(
            *_conv_bn(in_chans, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), *_conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
        )
        side = self.work_size // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * side * side, num_classes))


@_register("cnn", "compact CNN (width 16), fast CPU default for small images")
def _cnn(in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    return CompactCNN(in_chans, num_classes, img_size, width=16)


@_register("cnn-w32", "compact CNN (width 32): slower, more accurate on CIFAR-10")
def _cnn_w32(in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    return CompactCNN(in_chans, num_classes, img_size, width=32)


class LeNetStyle(_SmallImageNet):
    """conv5x5(32) relu maxpool | conv5x5(64) relu maxpool | linear(256) relu linear.

    LeCun-style network with no normalisation and no dropout: architecturally unlike
    :class:`CompactCNN` (3x3 conv-BN stacks), the default *scorer* that is kept
    independent of the classifier inside the training loss. Inputs above ``work_size``
    px are area-downsampled first."""

    def __init__(self, in_chans: int, num_classes: int, img_size: int, work_size: int = 32) -> None:
        super().__init__()
        self.work_size = img_size if img_size <= SMALL_IMAGE else work_size
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = self.work_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, num_classes))


@_register("lenet", "LeNet-style CNN (5x5 convs, no BatchNorm): the default independent scorer")
def _lenet(in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    return LeNetStyle(in_chans, num_classes, img_size)


def _adapt_resnet(net: Any, in_chans: int, img_size: int) -> nn.Module:
    if img_size <= SMALL_IMAGE:
        net.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
    return net


@_register("resnet18", "torchvision ResNet-18 (small-image stem for <= 64 px)")
def _resnet18(in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    from torchvision.models import resnet18

    return _adapt_resnet(resnet18(weights=None, num_classes=num_classes), in_chans, img_size)


@_register("resnet101", "torchvision ResNet-101, the paper's classifier (GPU / user checkpoints)")
def _resnet101(in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    from torchvision.models import resnet101

    return _adapt_resnet(resnet101(weights=None, num_classes=num_classes), in_chans, img_size)


class FrozenClassifier(nn.Module):
    """A classifier that stays frozen: always in eval mode (``train()`` is a no-op), no
    parameter requires grad. Gradients still flow *through* it to its input, so an SC
    model can be trained on CE(y, evaluator(x_hat)) without updating the evaluator."""

    def __init__(self, net: nn.Module, info: Any = None) -> None:
        super().__init__()
        self.net = net
        self.info = info  # EvaluatorInfo (metadata), not part of the state dict
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenClassifier":
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes) logits
        return self.net(x)


def freeze(net: nn.Module, info: Any = None) -> FrozenClassifier:
    return net if isinstance(net, FrozenClassifier) else FrozenClassifier(net, info)


@torch.no_grad()
def classifier_accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``net`` on (x, y) (eval mode, restored afterwards), computed on
    ``net``'s device; ``x`` and ``y`` may stay on the CPU (each batch is moved)."""
    if x.shape[0] == 0:
        return float("nan")
    was = net.training
    net.eval()
    dev = module_device(net)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = to_device(x[i:i + batch_size], dev), to_device(y[i:i + batch_size], dev)
        correct += (net(xb).argmax(-1) == yb).sum()
    net.train(was)
    return int(correct) / x.shape[0]
