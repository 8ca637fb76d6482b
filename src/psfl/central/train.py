"""Central (non-federated) training of one SC model: small functions, not a framework.

    loss = CE(y, evaluator(m_hat)) + MSE(m, m_hat)     (Eq. 8 + the MSE of Eqs. 15/16)

The evaluator is frozen: gradients flow through it into the SC model, never into it.
Loops run where the model is: batches are moved to the model's device, random draws come
from CPU generators (:mod:`psfl.utils.device`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from psfl.channel import CHANNELS, Channel
from psfl.utils.device import device_info, module_device, resolve_device, seeded, to_device
from psfl.utils.errors import PsflError
from psfl.evaluate.metrics import using_channel
from psfl.training.losses import mse_scale_for, task_loss, task_loss_terms  # noqa: F401  (re-exported)
from psfl.models.base import SCOutput


def sample_snr(train_snr_db: float | tuple[float, float], batch: int,
               generator: torch.Generator) -> float | Tensor:
    """A fixed training SNR, or for ``(lo, hi)`` one SNR per sample ~ U[lo, hi] dB (a CPU
    tensor; the channel moves it to the symbols' device)."""
    if isinstance(train_snr_db, (int, float)):
        return float(train_snr_db)
    lo, hi = train_snr_db
    return lo + (hi - lo) * torch.rand(batch, generator=generator)  # (B,)


def train_step(model: nn.Module, evaluator: nn.Module, x: Tensor, y: Tensor, snr_db: float | Tensor,
               optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None,
               mse_scale: float = 1.0, ce_weight: float = 1.0) -> dict[str, float]:
    """One optimiser step on the task loss; returns the loss terms as floats. ``x``, ``y``,
    ``model`` and ``evaluator`` on one device."""
    out = model(x, snr_db, generator=generator)
    terms = task_loss(out, x, y, evaluator, mse_scale, ce_weight)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def _constant_lr(step: int, total: int, base: float) -> float:
    return base


def _cosine_lr(step: int, total: int, base: float) -> float:
    from psfl.central.pretrain import cosine_lr

    return cosine_lr(step, total, base, warmup=0)


# the learning rate of step ``step`` of ``total`` for a base rate: constant, or a half-cosine
# decay from the base rate to 0 at the last step (no warm-up)
LR_SCHEDULES: dict[str, Callable[[int, int, float], float]] = {"constant": _constant_lr, "cosine": _cosine_lr}
STATE_VERSION = 1


def fit(model: nn.Module, evaluator: nn.Module, prepared: Any, epochs: int = 3, batch_size: int = 64,
        lr: float = 1e-3, optimizer: str = "adamw", train_snr_db: float | tuple[float, float] = 10.0,
        channel: Channel | None = None, seed: int = 0, weight_decay: float = 0.0, momentum: float = 0.9,
        max_samples: int | None = None, progress: bool = True, mse_scale: float = 1.0,
        ce_weight: float = 1.0, lr_schedule: str = "constant", state_path: str | Path | None = None,
        state_key: str = "") -> list[dict[str, float]]:
    """Train ``model`` centrally on ``prepared.x_train`` (a ``psfl.data.PreparedData``).

    ``optimizer``: a name in ``psfl.training.optim.OPTIMIZERS`` (sgd / adam / adamw).
    ``lr_schedule``: a name in :data:`LR_SCHEDULES`, over all ``epochs`` (set per step).
    ``channel``: replaces the model's channel for training (None: keep it).
    ``max_samples``: train on a seeded random subset of that many samples.
    ``state_path``: after every epoch the whole training state (model, optimiser,
    generator, history) is written there atomically; if the file exists, training
    continues after its last epoch, so an interrupted run ends with the same weights as
    one that never stopped. ``state_key`` names the run it belongs to (a state of
    another key is refused).
    Runs on the model's device (``evaluator`` must be there too); the data may stay on the
    CPU, each batch is moved. Shuffling and SNR draws come from a CPU generator seeded
    with ``seed``, so they are the same on every device.
    Returns one dict per epoch: loss, ce, mse (sample means), lr (of its last step),
    seconds, samples_per_s.
    """
    from tqdm.auto import tqdm

    from psfl.data import iterate_batches
    from psfl.training.optim import make_optimizer

    if lr_schedule not in LR_SCHEDULES:
        raise PsflError(f"unknown lr schedule {lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    schedule = LR_SCHEDULES[lr_schedule]
    g = torch.Generator().manual_seed(seed)
    dev = module_device(model)
    x, y = prepared.x_train, prepared.y_train
    if max_samples is not None and max_samples < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=g)[:max_samples].sort().values
        x, y = x[idx], y[idx]
    opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, momentum, weight_decay)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    total = epochs * steps_per_epoch
    history: list[dict[str, float]] = []
    if state_path is not None and Path(state_path).is_file():
        history = _load_state(Path(state_path), state_key, model, opt, g)
        if len(history) > epochs:
            raise PsflError(f"{state_path}: {len(history)} epochs done, more than the {epochs} asked for")
    bar = tqdm(total=total, initial=len(history) * steps_per_epoch, desc="train", disable=not progress, leave=False)
    model.train()
    with using_channel(model, channel):
        for epoch in range(len(history), epochs):
            sums = {"loss": 0.0, "ce": 0.0, "mse": 0.0}
            seen, t0 = 0, time.perf_counter()
            step_lr = lr
            for i, (xb, yb) in enumerate(iterate_batches(x, y, batch_size, g, shuffle=True)):
                step_lr = schedule(epoch * steps_per_epoch + i, total, lr)
                for group in opt.param_groups:
                    group["lr"] = step_lr
                xb, yb = to_device(xb, dev), to_device(yb, dev)
                terms = train_step(model, evaluator, xb, yb, sample_snr(train_snr_db, xb.shape[0], g), opt, g,
                                   mse_scale, ce_weight)
                if not math.isfinite(terms["loss"]):
                    raise PsflError(f"diverged in epoch {epoch + 1}, step {i + 1}: the training loss is "
                                    f"{terms['loss']}; the {epoch} completed epoch(s) are kept in the training "
                                    "state (lower --lr)" if state_path is not None else
                                    f"diverged in epoch {epoch + 1}, step {i + 1}: the training loss is "
                                    f"{terms['loss']} (lower --lr)")
                for k in sums:
                    sums[k] += terms[k] * xb.shape[0]
                seen += xb.shape[0]
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{terms['loss']:.3f}",
                                sps=f"{seen / (time.perf_counter() - t0):.0f}")
            dt = time.perf_counter() - t0
            history.append({"epoch": epoch, **{k: v / seen for k, v in sums.items()}, "lr": step_lr,
                            "seconds": dt, "samples_per_s": seen / dt})
            if state_path is not None:
                _save_state(Path(state_path), state_key, model, opt, g, history)
    bar.close()
    return history


def _save_state(path: Path, key: str, model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
                history: list[dict[str, float]]) -> None:
    from psfl.utils.fileio import atomic_path

    state = {"version": STATE_VERSION, "key": key, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "generator": g.get_state(), "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, key: str, model: nn.Module, opt: torch.optim.Optimizer,
                g: torch.Generator) -> list[dict[str, float]]:
    try:
        state = torch.load(path, map_location=module_device(model), weights_only=True)
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file)
        raise PsflError(f"{path}: not a psfl train state ({type(e).__name__}: {e}); move it away") from None
    if state.get("version") != STATE_VERSION or state.get("key") != key:
        raise PsflError(f"{path} is the training state of another run (or version); move it away to start "
                        "this one")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    g.set_state(state["generator"].cpu())
    return list(state["history"])


# ----------------------------------------------------------------------------- one central run
@dataclass
class CentralConfig:
    """`psfl train`: one SC model trained centrally, then scored at several test SNRs."""

    model: str = "cpu-M"
    bandwidth_ratio: float | None = None  # k/n: sets the model's channel width (None: the preset's)
    dataset: str = "fashion_mnist"
    source: str = "auto"
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"  # a name in LR_SCHEDULES (over all epochs)
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    train_snr_db: float | tuple[float, float] = 10.0
    channel: str = "awgn"
    test_snr_db: tuple[float, ...] = (0.0, 10.0, 20.0)
    eval_samples: int = 0  # test images scored per SNR (0 = the whole test set)
    max_samples: int | None = None  # train on a seeded subset of this many images
    seed: int = 0
    evaluator_arch: str = "cnn"  # the loss classifier (inside the task loss)
    evaluator_epochs: int = 3
    evaluator_seed: int = 0
    evaluator_checkpoint: str | None = None
    evaluator_cache_dir: str | None = None
    score_arch: str = "lenet"  # the independent scorer: the reported accuracy
    score_epochs: int = 3
    score_seed: int = 1
    mse_weight: float = 1.0  # see RunConfig.train.mse_weight / mse_space
    mse_space: str = "standardized"
    ce_weight: float = 1.0  # weight of the CE term of the task loss (0: pure MSE, deep JSCC's objective)
    device: str = "cpu"  # auto | cpu | cuda[:i] (psfl.utils.device.resolve_device)


@dataclass
class CentralResult:
    history: list[dict[str, float]]  # per epoch
    table: list[dict[str, float]]  # per test SNR: snr_db, accuracy, loss_clf_accuracy, psnr, ssim, mse, ce, loss
    clean_accuracy: float  # scorer on the clean test images (upper bound)
    samples_per_s: float  # training throughput over all epochs
    checkpoint: Path
    params: int
    baselines: dict[str, dict[str, float]]  # trivial reconstructions' PSNR/SSIM on the same test images
    device: dict[str, Any] | None = None  # psfl.utils.device.device_info of the run
    bandwidth: dict[str, Any] | None = None  # channel_dim, channel_symbols (real, per image), bandwidth_ratio (k/n)


def _test_subset(prepared: Any, k: int, seed: int) -> tuple[Tensor, Tensor]:
    n = prepared.x_test.shape[0]
    if k <= 0 or k >= n:
        return prepared.x_test, prepared.y_test
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return prepared.x_test[idx], prepared.y_test[idx]


STATE_FILE = "train_state.pt"  # the training state of an unfinished run (fit's state_path)
# fields that do not change the trained weights: a run may be resumed with other values
NOT_TRAINING = ("test_snr_db", "eval_samples", "device", "data_dir", "evaluator_cache_dir", "score_arch",
                "score_epochs", "score_seed")


def training_key(cfg: CentralConfig) -> str:
    """What an unfinished run's training state belongs to: every field of ``cfg`` that
    changes the trained weights (all but :data:`NOT_TRAINING`), as sorted JSON."""
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in NOT_TRAINING}, sort_keys=True, default=str)


def run_central(cfg: CentralConfig, out_dir: str | Path, progress: bool = True, resume: bool = False) -> CentralResult:
    """Load data and evaluator, train ``cfg.model`` with :func:`fit`, save ``model.pt``
    (``psfl.models.save_model_checkpoint``), score at each test SNR, and write
    ``history.json``, ``eval.csv`` and ``result.json`` into ``out_dir``. Model, evaluator,
    batches, channel noise and metrics live on ``cfg.device``; the checkpoint is saved
    from CPU copies. While it trains, ``out_dir/train_state.pt`` holds the state after the
    last finished epoch; a folder with one is refused unless ``resume`` (then training
    continues from it, if it was made with the same training settings) and the file is
    removed when training ends."""
    from psfl import data as D
    from psfl.evaluate import classifier_accuracy, evaluate_reconstruction, load_evaluator
    from psfl.models import MODELS, count_parameters, create_model, save_model_checkpoint

    if cfg.epochs < 1:
        raise PsflError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise PsflError(f"unknown lr schedule {cfg.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    dev = resolve_device(cfg.device)
    out = Path(out_dir)
    state = out / STATE_FILE
    if state.is_file() and not resume:
        raise PsflError(f"{out} holds an unfinished training run ({STATE_FILE}); --resume continues it, or move "
                        "it away")
    out.mkdir(parents=True, exist_ok=True)
    try:
        preset = MODELS.get(cfg.model)
        CHANNELS.get(cfg.channel)
    except KeyError as e:
        raise PsflError(str(e.args[0])) from None
    ds = D.load_dataset(cfg.dataset, source=cfg.source, data_dir=cfg.data_dir)
    prepared = D.prepare(ds, preset.input_preset)
    res = prepared.input
    evaluator = load_evaluator(cfg.dataset, cfg.source, cfg.data_dir, res.name, cfg.evaluator_arch,
                               cfg.evaluator_epochs, checkpoint=cfg.evaluator_checkpoint,
                               cache_dir=cfg.evaluator_cache_dir, progress=progress, seed=cfg.evaluator_seed,
                               dataset_obj=ds, device=dev)
    scorer = load_evaluator(cfg.dataset, cfg.source, cfg.data_dir, res.name, cfg.score_arch, cfg.score_epochs,
                            cache_dir=cfg.evaluator_cache_dir, progress=progress, seed=cfg.score_seed,
                            dataset_obj=ds, device=dev)
    mse_scale = mse_scale_for(prepared, cfg.mse_weight, cfg.mse_space)
    with seeded(cfg.seed):  # seeded init (on the CPU) without touching global state
        model = create_model(cfg.model, img_size=res.size, in_chans=res.channels, channel=cfg.channel,
                             bandwidth_ratio=cfg.bandwidth_ratio)
    model.to(dev, memory_format=model.memory_format)
    history = fit(model, evaluator, prepared, cfg.epochs, cfg.batch_size, cfg.lr, cfg.optimizer,
                  cfg.train_snr_db, seed=cfg.seed, weight_decay=cfg.weight_decay,
                  max_samples=cfg.max_samples, progress=progress, mse_scale=mse_scale, ce_weight=cfg.ce_weight,
                  lr_schedule=cfg.lr_schedule, state_path=state, state_key=training_key(cfg))
    seconds = sum(h["seconds"] for h in history)
    seen = sum(h["samples_per_s"] * h["seconds"] for h in history)
    x_test, y_test = _test_subset(prepared, cfg.eval_samples, cfg.seed)
    table = []
    for snr in cfg.test_snr_db:
        g = torch.Generator().manual_seed(cfg.seed + 7919)  # same noise draws for every SNR
        m = evaluate_reconstruction(model, scorer, x_test, y_test, float(snr), generator=g, input=res,
                                    loss_classifier=evaluator, mse_scale=mse_scale)
        table.append({"snr_db": float(snr), **m})
    clean = classifier_accuracy(scorer, x_test, y_test)
    from psfl.evaluate.baselines import statistics_of, trivial_baselines

    baselines = trivial_baselines(statistics_of(prepared), x_test, y_test, res)
    config = {**asdict(cfg), "input_preset": res.name, "dataset_fingerprint": ds.fingerprint(),
              "dataset_source": ds.source, "mse_scale": mse_scale}
    ckpt = save_model_checkpoint(model, out / "model.pt", config=config)
    bandwidth = {"channel_dim": model.channel_dim, "channel_symbols": model.channel_symbols,
                 "bandwidth_ratio": model.bandwidth_ratio}
    result = CentralResult(history, table, clean, seen / seconds, ckpt, count_parameters(model), baselines,
                           device_info(dev), bandwidth)
    _write_outputs(result, config, out)
    state.unlink(missing_ok=True)  # the run is finished: model.pt and result.json hold it
    return result


def _write_outputs(r: CentralResult, config: dict[str, Any], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(r.history, indent=2) + "\n")
    keys = list(r.table[0])
    lines = [",".join(keys)] + [",".join(f"{row[k]:.6g}" for k in keys) for row in r.table]
    (out / "eval.csv").write_text("\n".join(lines) + "\n")
    summary = {"config": config, "params": r.params, "train_samples_per_s": r.samples_per_s,
               "clean_accuracy": r.clean_accuracy, "table": r.table, "history": r.history,
               "baselines": r.baselines,
               "checkpoint": str(r.checkpoint), "device": r.device, "bandwidth": r.bandwidth}
    (out / "result.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def format_central_table(r: CentralResult) -> str:
    """The test-SNR table printed by `psfl train`."""
    rows = [f"{'SNR (dB)':>8}  {'accuracy':>8}  {'loss-clf acc':>12}  {'PSNR (dB)':>9}  {'SSIM':>6}  {'MSE':>8}"]
    for t in r.table:
        rows.append(f"{t['snr_db']:>8.1f}  {t['accuracy']:>8.4f}  {t['loss_clf_accuracy']:>12.4f}  {t['psnr']:>9.2f}  "
                    f"{t['ssim']:>6.4f}  {t['mse']:>8.5f}")
    for name, b in r.baselines.items():
        rows.append(f"baseline {name:>12}: PSNR {b['psnr']:.2f} dB, SSIM {b['ssim']:.4f}")
    rows.append(f"accuracy = independent scorer; scorer on clean test images: {r.clean_accuracy:.4f}")
    if r.bandwidth is not None:
        from psfl.models import format_ratio

        rows.append(f"bandwidth: k/n = {format_ratio(r.bandwidth['bandwidth_ratio'])} "
                    f"({r.bandwidth['channel_symbols']:,} real channel symbols per image, c = {r.bandwidth['channel_dim']})")
    where = f" on {r.device['device']} ({r.device['name']})" if r.device else ""
    rows.append(f"training{where}: {r.samples_per_s:.0f} samples/s, {r.params:,} parameters, "
                f"checkpoint {r.checkpoint}")
    return "\n".join(rows)
