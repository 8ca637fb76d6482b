"""MAE masked-autoencoder pre-training of a GSC model (He et al., the paper's ref. [32]),
producing a checkpoint that initialises a PSFL mentor.

Per batch: mask ``mask_ratio`` (0.75) of the patches at random, encode the visible ones,
send them through the channel codec and the channel, decode all patches, and minimise the
MSE on the *masked* patches only (optionally against per-patch normalised pixels,
``norm_pix_loss``). The channel defaults to a noiseless link (``snr_db=None``: symbols are
power-normalised, Y = X) so pre-training learns the semantics first; give ``snr_db`` to
pre-train through AWGN at that SNR. Optimiser as in MAE: AdamW (betas 0.9/0.95, weight
decay 0.05) with linear warm-up then cosine decay; the learning rate default is larger
than MAE's because runs here are short.

    from psfl.central.pretrain import PretrainConfig, pretrain
    result = pretrain(PretrainConfig(model="cpu-M", dataset="fashion_mnist", steps=500,
                                     out="runs/mae-cpu-M.pt"))
    mentor = psfl.models.load_model_checkpoint(result.checkpoint)
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from psfl.utils.device import device_info, module_device, resolve_device, seeded, to_device
from psfl.config import PretrainConfig  # noqa: F401  (re-exported: psfl.central.pretrain.PretrainConfig)
from psfl.utils.errors import PsflError
from psfl.models.gsc import patchify


@dataclass
class PretrainResult:
    history: list[dict[str, float]]  # one entry per logged step: step, loss, lr
    final: dict[str, float]  # masked_mse / full_mse on held-out images, seconds, samples_per_s
    checkpoint: Path | None
    model: nn.Module = field(repr=False)


def mae_loss(model: nn.Module, x: Tensor, x_hat: Tensor, mask: Tensor | None,
             norm_pix_loss: bool = False) -> Tensor:
    """MAE's objective: per-patch MSE between prediction and target, averaged over the
    masked patches (all patches when ``mask`` is None). ``norm_pix_loss`` normalises
    each target patch by its own mean and variance."""
    p = model.patch_size
    target = patchify(x, p)  # (B, N, P*P*C)
    pred = patchify(x_hat, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    if mask is None:
        return per_patch.mean()
    return (per_patch * mask).sum() / mask.sum()


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then half-cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """MAE's split: no weight decay on biases, norms and the cls/mask tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name in ("cls_token", "mask_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain_mae(model: nn.Module, x_train: Tensor, cfg: PretrainConfig, generator: torch.Generator,
                 log: Callable[[dict[str, float]], None] | None = None, log_every: int = 50
                 ) -> list[dict[str, float]]:
    """The MAE training loop on a tensor of images ``(N, C, H, W)`` (already in the
    model's input space), on the model's device (each batch is moved there). Batches and
    masks/noise come from ``generator`` (CPU: the same draws on every device)."""
    from psfl.data import iterate_batches

    if getattr(model, "family", None) != "gsc":
        raise PsflError(f"MAE pre-training needs a GSC model, got {type(model).__name__}")
    n = int(x_train.shape[0])
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.steps if cfg.steps > 0 else per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    labels = torch.zeros(n, dtype=torch.long)
    history: list[dict[str, float]] = []
    step, running, count = 0, 0.0, 0
    dev = module_device(model)
    model.train()
    while step < total:
        for xb, _ in iterate_batches(x_train, labels, cfg.batch_size, generator, shuffle=True):
            lr = cosine_lr(step, total, cfg.lr, warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            xb = to_device(xb, dev)
            out = model(xb, cfg.snr_db, generator=generator, mask_ratio=cfg.mask_ratio)
            loss = mae_loss(model, xb, out.x_hat, out.mask, cfg.norm_pix_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running, count = running + float(loss.detach()), count + 1
            if step % log_every == 0 or step == total:
                entry = {"step": step, "loss": running / count, "lr": lr}
                history.append(entry)
                if log:
                    log(entry)
                running, count = 0.0, 0
            if step >= total:
                break
    return history


@torch.no_grad()
def evaluate_mae(model: nn.Module, x: Tensor, cfg: PretrainConfig, seed: int) -> dict[str, float]:
    """Held-out masked-patch MSE (mask_ratio) and full reconstruction MSE (no mask), both
    through the pre-training channel, with a fixed generator, on the model's device."""
    model.eval()
    dev = module_device(model)
    g = torch.Generator().manual_seed(seed)
    sums = {"masked_mse": 0.0, "full_mse": 0.0}
    n = 0
    for i in range(0, int(x.shape[0]), 256):
        xb = to_device(x[i:i + 256], dev)
        out = model(xb, cfg.snr_db, generator=g, mask_ratio=cfg.mask_ratio)
        sums["masked_mse"] += float(mae_loss(model, xb, out.x_hat, out.mask, cfg.norm_pix_loss)) * len(xb)
        out = model(xb, cfg.snr_db, generator=g)
        sums["full_mse"] += float(mae_loss(model, xb, out.x_hat, None, cfg.norm_pix_loss)) * len(xb)
        n += len(xb)
    model.train()
    return {k: v / max(1, n) for k, v in sums.items()}


def pretrain(cfg: PretrainConfig, log: Callable[[dict[str, float]], None] | None = None) -> PretrainResult:
    """Load the dataset (psfl.data), build ``cfg.model`` at the dataset's size, pre-train
    it as a masked autoencoder, evaluate on held-out images and write the checkpoint
    (:func:`psfl.models.save_model_checkpoint`, config and final metrics included; CPU
    tensors, so it loads anywhere). Runs on ``cfg.device``."""
    from psfl import data as D
    from psfl.models import MODELS, create_model, parse_ratio, save_model_checkpoint

    cfg.validate()
    dev = resolve_device(cfg.device)
    try:
        preset = MODELS.get(cfg.model)
    except KeyError as e:
        raise PsflError(str(e.args[0])) from None
    if preset.family != "gsc":
        raise PsflError(f"MAE pre-training needs a GSC preset; {cfg.model!r} is {preset.family}")
    ds = D.load_dataset(cfg.dataset, source=cfg.source, data_dir=cfg.data_dir)
    prepared = D.prepare(ds, D.INPUT_PRESETS.get(preset.input_preset))
    x_train = prepared.x_train[: cfg.max_train] if cfg.max_train > 0 else prepared.x_train
    x_eval = prepared.x_test[: cfg.eval_samples]
    with seeded(cfg.seed):  # parameter initialisation (on the CPU) only; the global state is restored
        model = create_model(cfg.model, img_size=prepared.input.size, in_chans=prepared.input.channels,
                             bandwidth_ratio=parse_ratio(cfg.bandwidth_ratio, "pretrain bandwidth_ratio")
                             if cfg.bandwidth_ratio else None)
    model.to(dev)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    history = pretrain_mae(model, x_train, cfg, g, log)
    seconds = time.perf_counter() - t0
    steps = int(history[-1]["step"]) if history else 0
    final = evaluate_mae(model, x_eval, cfg, cfg.seed + 1)
    final.update(seconds=seconds, samples_per_s=steps * cfg.batch_size / max(seconds, 1e-9),
                 train_images=float(len(x_train)))
    ckpt = None
    if cfg.out:
        meta: dict[str, Any] = {"pretrain": asdict(cfg), "final": final, "dataset_source": ds.source,
                                "input": asdict(prepared.input), "device": device_info(dev)}
        ckpt = save_model_checkpoint(model, cfg.out, config=meta)
    return PretrainResult(history, final, ckpt, model)
