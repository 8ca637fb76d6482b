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


def _stack(states: Sequence[dict[str, Tensor]], k: str) -> Tensor:
    return torch.stack([s[k].double() for s in states])


def _cast(values: Tensor, ref: Tensor) -> Tensor:
    return (values if ref.is_floating_point() else values.round()).to(ref.dtype)


def coordinate_median(states: Sequence[dict[str, Tensor]], weights: Sequence[float] | None = None
                      ) -> dict[str, Tensor]:
    """Coordinate-wise median of the states (Yin et al., ICML 2018): robust to a minority
    of arbitrary uploads; unweighted (an even count takes the mean of the middle two)."""
    if not states:
        raise ValueError("median needs at least one state")
    return {k: _cast(_stack(states, k).quantile(0.5, dim=0) if states[0][k].numel() else states[0][k].double(),
                     states[0][k]) for k in states[0]}


def trimmed_mean(states: Sequence[dict[str, Tensor]], weights: Sequence[float] | None = None, trim: float = 0.1
                 ) -> dict[str, Tensor]:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the
    floor(trim * n) largest and smallest values and average the rest (unweighted)."""
    if not states:
        raise ValueError("trimmed mean needs at least one state")
    n = len(states)
    b = int(trim * n)
    if n - 2 * b < 1:
        raise ValueError(f"trim {trim} leaves no value of {n}")
    out = {}
    for k in states[0]:
        v = _stack(states, k).sort(dim=0).values
        out[k] = _cast(v[b:n - b].mean(0), states[0][k])
    return out


def aggregate_states(rule: str, states: Sequence[dict[str, Tensor]], weights: Sequence[float],
                     trim: float = 0.1) -> dict[str, Tensor]:
    """The server's rule (``server.aggregation``): ``mean`` is Eq. 10 (weighted by the
    clients' data volumes); ``median`` and ``trimmed_mean`` are robust, unweighted."""
    if rule == "mean":
        return fedavg(states, weights)
    if rule == "median":
        return coordinate_median(states)
    if rule == "trimmed_mean":
        return trimmed_mean(states, trim=trim)
    raise ValueError(f"unknown aggregation rule {rule!r}")


AGGREGATION_RULES = ("mean", "median", "trimmed_mean")
