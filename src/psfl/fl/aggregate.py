"""Server-side aggregation, Eq. 10."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def fedavg(states: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Eq. 10: w_g = sum_k N_k w_k / sum_k N_k over every entry of the state dicts.

    Parameters *and* buffers are averaged (BatchNorm running statistics included);
    integer buffers (``num_batches_tracked``) are averaged and rounded. Uses
    ``torch._foreach_*`` so no client model is deep-copied.
    """
    if not states:
        raise ValueError("fedavg needs at least one state")
    if len(states) != len(weights):
        raise ValueError("one weight per state")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    keys = list(states[0].keys())
    acc = [states[0][k].double() * (weights[0] / total) for k in keys]
    for st, w in zip(states[1:], weights[1:]):
        torch._foreach_add_(acc, [st[k].double() for k in keys], alpha=w / total)
    out = {}
    for k, a in zip(keys, acc):
        ref = states[0][k]
        out[k] = (a.round() if not ref.is_floating_point() else a).to(ref.dtype)
    return out
