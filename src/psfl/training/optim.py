"""Optimisers by name and the clipped step every training loop uses (core: used by
central training, pre-training and every federated method)."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from psfl.utils.registry import Registry

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)


def make_optimizer(name: str, params: Iterable[Any], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """An optimiser from :data:`OPTIMIZERS`; ``momentum`` applies to SGD only."""
    cls = OPTIMIZERS.get(name)
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if cls is torch.optim.SGD:
        kw["momentum"] = momentum
    return cls(params, **kw)


def clipped_step(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the optimiser's gradients to ``max_norm`` (if > 0), then step."""
    if max_norm > 0:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
