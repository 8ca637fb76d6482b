"""The one local-training loop every federated method runs, with small hooks.

A method describes *what* is trained and *what* the loss is; this loop does the rest,
the same way for PSFL (mentor + student, jointly) and for every contender (one model):

    for each batch (x, y):
        outs, terms = objective(x, y)              # per trained model: output, named loss terms
        terms[m] += hook.extra_loss(m, outs[m], x, y)   for every hook    (e.g. FedProx)
        check every total is finite                # else DivergenceError(round, client, quantity)
        backward(sum of the totals)                # each total only reaches its own model
        per model: hook.before_clip(m)             # gradient transform (e.g. the AGP mask)
                   clip to grad_clip, optimiser step
                   hook.after_step(m)              # weight transform (e.g. hold the mask)

``terms[m]["total"]`` is what model ``m`` minimises; every other term is logged as
``"{m.name}_{term}"`` (batch means). A hook sees the model's weights at the start of the
round (``Trained.start``), so proximal terms need no state of their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from psfl.utils.errors import DivergenceError
from psfl.fl.agp import mask_parameters_
from psfl.training.optim import clipped_step


@dataclass
class Trained:
    """One model the loop trains: its log name, module, optimiser and round-start weights."""

    name: str  # "local", "mentor", "student": the prefix of its logged terms
    model: nn.Module
    optimizer: torch.optim.Optimizer
    start: dict[str, Tensor] = field(default_factory=dict)  # detached weights at the round's start

    @classmethod
    def of(cls, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> "Trained":
        """Record ``model``'s current parameters as the round's starting weights."""
        return cls(name, model, optimizer, {k: p.detach().clone() for k, p in model.named_parameters()})


class LocalHook:
    """Override any of the three; the defaults do nothing."""

    def extra_loss(self, t: Trained, out: Any, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Named terms added to ``t``'s total (e.g. a proximal term)."""
        return {}

    def before_clip(self, t: Trained) -> None:
        """Transform ``t``'s gradients before clipping (e.g. zero pruned positions)."""

    def after_step(self, t: Trained) -> None:
        """Transform ``t``'s weights after the optimiser step."""


Objective = Callable[[Tensor, Tensor], tuple[dict[str, Any], dict[str, dict[str, Tensor]]]]


def local_train(trained: Sequence[Trained], batches: Iterable[tuple[Tensor, Tensor]], objective: Objective,
                hooks: Sequence[LocalHook] = (), grad_clip: float = 0.0, rnd: int = 0,
                cid: int | None = None) -> dict[str, float]:
    """Run the loop above over ``batches``; return the batch means of every logged term.
    ``objective(x, y) -> (outs, terms)`` with ``outs[name]`` the model output and
    ``terms[name]`` a dict of scalar tensors holding ``"total"``, for every trained name."""
    logs: dict[str, list[float]] = {}
    for x, y in batches:
        outs, terms = objective(x, y)
        for t in trained:
            mine = terms[t.name]
            for h in hooks:
                for k, v in h.extra_loss(t, outs[t.name], x, y).items():
                    mine[k] = v
                    mine["total"] = mine["total"] + v
            total = float(mine["total"].detach())
            if not math.isfinite(total):
                raise DivergenceError(rnd, cid, f"{t.name} loss", total)
        for t in trained:
            t.optimizer.zero_grad(set_to_none=True)
        sum(terms[t.name]["total"] for t in trained).backward()
        for t in trained:
            for h in hooks:
                h.before_clip(t)
            clipped_step(t.optimizer, grad_clip)
            for h in hooks:
                h.after_step(t)
            for k, v in terms[t.name].items():
                logs.setdefault(f"{t.name}_{k}", []).append(float(v.detach()))
    return {k: sum(v) / len(v) for k, v in logs.items()}


class HoldMask(LocalHook):
    """AGP's mask on one trained model (by name): pruned gradients are zeroed *before*
    clipping, so the kept weights get the whole clip budget, and pruned weights are held
    at exactly zero after every step."""

    def __init__(self, name: str, params: dict[str, nn.Parameter], mask: dict[str, Tensor]) -> None:
        self.name, self.params, self.mask = name, params, mask

    def before_clip(self, t: Trained) -> None:
        if t.name != self.name:
            return
        for k, m in self.mask.items():
            g = self.params[k].grad
            if g is not None:
                g.mul_(m.to(g.dtype))

    @torch.no_grad()
    def after_step(self, t: Trained) -> None:
        if t.name == self.name:
            mask_parameters_(self.params, self.mask)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                   forward: Callable[[Tensor], Any]) -> int:
    """Re-estimate every BatchNorm's running mean/variance of ``model`` for its current
    weights: the statistics are reset and averaged cumulatively (``momentum=None``) over
    ``forward(x)`` of the given batches, in train mode, without gradients. AGP changes the
    weights under BatchNorm at every mask change; the exponential running averages of
    local training still carry statistics of the old weights. Returns the batch count
    (0: the model has no BatchNorm or no batch came; then nothing changed)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    n = 0
    for x, _ in batches:
        forward(x)
        n += 1
    model.train(was_training)
    for m, (momentum, mean, var, count) in zip(norms, saved):
        m.momentum = momentum
        if n == 0:
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
    return n
