"""Trivial reconstruction baselines: what PSNR/SSIM a model scores without transmitting
anything image-specific. Every reconstruction number psfl reports is shown beside them.

- ``constant``: every pixel set to the training set's mean pixel value (the best
  constant in MSE);
- ``dataset_mean``: the per-pixel mean image of the training set;
- ``class_mean``: the per-pixel mean training image of the true class (an oracle that
  knows the label: a model that only conveys the class can reach it, no more).

Statistics come from the training split; the scores are on the test images given.
Pixels are in [0, 1] (de-normalised), exactly as :func:`psfl.evaluate.evaluate_reconstruction`
scores models.

Accuracy has its trivial baselines too (:func:`accuracy_baselines`): guessing (1/C) and
one class for every image (the most frequent class's share of the scored labels: what the
scorer reaches on any constant reconstruction), and :func:`chance_bound` says when a
score is above them.
"""
from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from psfl.evaluate.metrics import to_unit_range

BASELINES = ("constant", "dataset_mean", "class_mean")


def _scores(pred: Tensor, target: Tensor) -> dict[str, float]:
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    from psfl.evaluate.metrics import _ssim_kernel

    k, sigma = _ssim_kernel(min(target.shape[-2:]))
    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=k, sigma=sigma)
    for i in range(0, target.shape[0], 512):
        psnr.update(pred[i:i + 512], target[i:i + 512])
        ssim.update(pred[i:i + 512], target[i:i + 512])
    return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute())}


@dataclass(frozen=True)
class TrainStatistics:
    """What the baselines and the MSE scale read of a training split, in [0, 1] pixels."""

    mean_pixel: float  # the best constant in MSE
    mean_image: Tensor  # (C, H, W)
    class_mean: Tensor  # (K, C, H, W); a class without images is all zeros
    variance: float  # :func:`pixel_variance`


@torch.no_grad()
def train_statistics(x_train: Tensor, y_train: Tensor, num_classes: int, input: Any = None) -> TrainStatistics:
    """The training split's statistics (model-space ``x_train``; ``input`` de-normalises)."""
    train = to_unit_range(x_train.float(), input)  # (N, C, H, W)
    class_sum = torch.zeros((num_classes, *train.shape[1:]), dtype=torch.float64)
    class_sum.index_add_(0, y_train, train.double())
    counts = torch.bincount(y_train, minlength=num_classes).clamp_min(1).double().view(-1, 1, 1, 1)
    return TrainStatistics(float(train.mean()), train.mean(0), (class_sum / counts).float(),
                           pixel_variance(x_train, input))


# per prepared split: its statistics and the baselines of each test subset scored so far
_OF_PREPARED: "weakref.WeakKeyDictionary[Any, tuple[TrainStatistics, dict[bytes, dict]]]" = \
    weakref.WeakKeyDictionary()


def _derived(prepared: Any) -> tuple[TrainStatistics, dict[bytes, dict]]:
    if prepared not in _OF_PREPARED:
        _OF_PREPARED[prepared] = (train_statistics(prepared.x_train, prepared.y_train, prepared.num_classes,
                                                   prepared.input), {})
    return _OF_PREPARED[prepared]


def statistics_of(prepared: Any) -> TrainStatistics:
    """:func:`train_statistics` of a :class:`psfl.data.PreparedData`, computed once per
    object: runs in one process (a sweep, a test session) share the prepared tensors
    (``psfl.data.prepare`` caches them), so they share these too. The tensors are never
    written in place, so the cached values stay those of the object."""
    return _derived(prepared)[0]


def baselines_of(prepared: Any, idx: Tensor) -> dict[str, dict[str, float]]:
    """:func:`trivial_baselines` of the test images ``prepared.x_test[idx]``, computed once
    per (prepared split, subset) in a process (a copy: the caller may change it)."""
    stats, done = _derived(prepared)
    key = np.asarray(idx, dtype=np.int64).tobytes()
    if key not in done:
        done[key] = trivial_baselines(stats, prepared.x_test[idx], prepared.y_test[idx], prepared.input)
    return copy.deepcopy(done[key])


@torch.no_grad()
def trivial_baselines(stats: TrainStatistics, x_test: Tensor, y_test: Tensor,
                      input: Any = None) -> dict[str, dict[str, float]]:
    """PSNR (dB) and SSIM of the three trivial reconstructions of ``x_test`` (model-space
    tensors ``(N, C, H, W)``; ``input`` de-normalises them, None = already [0, 1]) from
    the training split's ``stats``."""
    test = to_unit_range(x_test.float(), input)  # (M, C, H, W)
    preds = {
        "constant": torch.full_like(test, stats.mean_pixel),
        "dataset_mean": stats.mean_image.expand_as(test),
        "class_mean": stats.class_mean[y_test],
    }
    return {name: _scores(preds[name].contiguous(), test) for name in BASELINES}


def accuracy_baselines(labels: Any, num_classes: int) -> dict[str, float]:
    """What a classifier scores on images with these ``labels`` without reading them:
    ``uniform`` (1/C, guessing) and ``majority_class`` (the most frequent class's share:
    one class for every image, the best constant answer; a scorer shown one and the same
    reconstruction for every image scores at most this)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=num_classes)
    return {"majority_class": float(counts.max() / counts.sum()), "uniform": 1.0 / num_classes}


def chance_bound(majority_class: float, images: int, sds: float = 3.0) -> float:
    """The accuracy a score must exceed to count as above chance: the majority-class share
    p plus ``sds`` binomial standard deviations, sqrt(p (1 - p) / n), of ``images`` scored
    predictions (a yardstick, not a test: a run's rounds score the same images)."""
    if images < 1:
        raise ValueError(f"chance_bound needs at least one scored image, got {images}")
    p = majority_class
    return p + sds * math.sqrt(p * (1 - p) / images)


def pixel_variance(x_train: Tensor, input: Any = None) -> float:
    """Variance of the training set's [0, 1] pixels (all channels pooled): the scale of
    ``train.mse_space = "standardized"``. Summed by numpy (pairwise, one thread): torch's
    reduction splits the sum by thread count, and the last bits of this scale (hence of
    every loss) would differ between a run and its Flower twin on fewer threads."""
    pixels = to_unit_range(x_train.float(), input).numpy(force=True).astype(np.float64)
    return float(pixels.var(ddof=1))
