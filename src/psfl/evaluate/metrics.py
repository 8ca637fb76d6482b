"""Reconstruction quality of an SC model (Section V-B): evaluator accuracy on m_hat, and
PSNR / SSIM / MSE of m_hat against m on de-normalised [0, 1] images."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psfl.channel import Channel
from psfl.utils.device import module_device, to_device


@contextlib.contextmanager
def using_channel(model: nn.Module, channel: Channel | None) -> Iterator[nn.Module]:
    """Temporarily replace ``model.channel`` (None: keep the model's own)."""
    if channel is None:
        yield model
        return
    old = model.channel
    model.channel = channel
    try:
        yield model
    finally:
        model.channel = old


def to_unit_range(x: Tensor, input: Any = None) -> Tensor:
    """Model input space -> pixels clamped to [0, 1] (``input``: a ResolvedInput; None
    means the data already is in [0, 1], the ``native`` preset)."""
    if input is not None:
        from psfl.data import denormalize

        x = denormalize(x, input)
    return x.clamp(0.0, 1.0)


def _ssim_kernel(size: int) -> tuple[int, float]:
    """The standard 11 px Gaussian window (sigma 1.5), shrunk for images under 11 px."""
    k = min(11, size if size % 2 else size - 1)
    return k, 1.5 * k / 11


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, evaluator: nn.Module, x: Tensor, y: Tensor,
                            snr_db: float | Tensor, channel: Channel | None = None,
                            generator: torch.Generator | None = None, batch_size: int = 256,
                            input: Any = None, loss_classifier: nn.Module | None = None,
                            mse_scale: float = 1.0) -> dict[str, float]:
    """Push ``x`` through ``model`` at ``snr_db`` (over ``channel``, default the model's own)
    and score the reconstructions. Runs on the model's device (the evaluator must be
    there too): batches and the metric states are moved there, ``x`` and
    ``y`` may stay on the CPU; channel noise comes from the (CPU) ``generator``.

    Returns ``accuracy`` (``evaluator`` top-1 on m_hat), ``psnr`` (dB, mean over images),
    ``ssim`` (mean over images), ``mse`` (pixels in [0, 1]), and the task-loss terms
    ``ce`` and ``loss`` = CE + mse_scale * MSE in the model's input space (Eqs. 15/16),
    with CE from ``loss_classifier`` when given (the classifier the model was trained
    against; its accuracy is then ``loss_clf_accuracy``), else from ``evaluator``.
    """
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    if x.shape[0] == 0:
        raise ValueError("evaluate_reconstruction needs at least one image")
    k, sigma = _ssim_kernel(min(x.shape[-2:]))
    dev = module_device(model)
    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)).to(dev)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=k, sigma=sigma).to(dev)
    was = model.training
    model.eval()
    # float64 sums on the device (no host sync per batch): correct, CE, MSE (input space), MSE ([0, 1]),
    # loss-classifier correct
    sums = torch.zeros(5, dtype=torch.float64, device=dev)
    n = 0
    with using_channel(model, channel):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = to_device(x[i:i + batch_size], dev), to_device(y[i:i + batch_size], dev)
            snr = snr_db[i:i + batch_size] if isinstance(snr_db, Tensor) and snr_db.ndim else snr_db
            x_hat = model(xb, snr, generator=generator).x_hat  # (B, C, H, W)
            logits = evaluator(x_hat)
            correct = (logits.argmax(-1) == yb).sum()
            correct_lc = torch.zeros((), device=dev)
            if loss_classifier is not None:
                logits = loss_classifier(x_hat)
                correct_lc = (logits.argmax(-1) == yb).sum()
            a, b = to_unit_range(x_hat, input), to_unit_range(xb, input)
            terms = (correct, F.cross_entropy(logits, yb, reduction="sum"),
                     F.mse_loss(x_hat, xb, reduction="none").flatten(1).mean(1).sum(),
                     (a - b).pow(2).flatten(1).mean(1).sum(), correct_lc)
            sums += torch.stack([t.double() for t in terms])
            psnr.update(a, b)
            ssim.update(a, b)
            n += xb.shape[0]
    model.train(was)
    correct, ce_sum, mse_in_sum, sq_err, correct_lc = sums.tolist()
    ce = ce_sum / n
    out = {"accuracy": correct / n, "psnr": float(psnr.compute()), "ssim": float(ssim.compute()),
           "mse": sq_err / n, "ce": ce, "loss": ce + mse_scale * mse_in_sum / n}
    if loss_classifier is not None:
        out["loss_clf_accuracy"] = correct_lc / n
    return out
