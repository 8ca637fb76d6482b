"""Client-level differential privacy on the uploads (the remedy the paper names in
Section II-B), as in DP-FedAvg (McMahan et al., ICLR 2018):

* :func:`privatize`: the client clips its model update (what it uploads minus what it
  received) to L2 norm ``clip`` and adds Gaussian noise N(0, (sigma * clip)^2) to every
  coordinate it sends, before any compression (which is then post-processing). Under an
  AGP mask only kept positions are sent and noised. BatchNorm running variances, noisy
  like everything else, are clamped to stay positive (post-processing).
* :func:`dp_epsilon`: the (epsilon, delta) guarantee per client after ``rounds`` rounds
  of this Gaussian mechanism with noise multiplier ``sigma`` and client sampling rate
  ``q``, from Opacus' RDP accountant (Mironov 2017; sampled Gaussian, Mironov et al.
  2019). Uniform sampling of a fixed number of clients is accounted as Poisson sampling
  at the same rate (the usual approximation).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn

from psfl.utils.errors import PsflError

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def running_var_keys(model: nn.Module) -> set[str]:
    """State keys of the normalisation layers' running variances (found by module type)."""
    from psfl.fl.agp import _NORM_TYPES

    return {f"{name}.running_var" if name else "running_var" for name, m in model.named_modules()
            if isinstance(m, _NORM_TYPES) and getattr(m, "running_var", None) is not None}


def privatize(local: Mapping[str, Tensor], start: Mapping[str, Tensor], clip: float, sigma: float,
              generator: torch.Generator, mask: Mapping[str, Tensor] | None = None,
              positive: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
    """``start`` + the clipped, noised update ``local - start`` over the floating-point
    entries (non-float entries are returned as in ``local``); ``mask``: entries whose
    zeros must stay zero (pruned positions, never sent); ``positive``: entries clamped
    to >= 1e-5 after the noise (running variances)."""
    keys = [k for k, v in local.items() if v.is_floating_point()]
    delta = {k: local[k].detach().double().cpu() - start[k].detach().double().cpu() for k in keys}
    m = {k: mask[k].detach().cpu().bool() for k in keys if mask is not None and k in mask}
    for k, keep in m.items():
        delta[k] = delta[k] * keep
    norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = dict(local)
    for k in keys:
        noise = torch.randn(delta[k].shape, generator=generator, dtype=torch.float64) * (sigma * clip)
        d = delta[k] * scale + noise
        if k in m:
            d = d * m[k]
        v = start[k].detach().double().cpu() + d
        if k in positive:
            v = v.clamp_min(1e-5)
        out[k] = v.to(local[k].dtype)
    return out


def dp_epsilon(rounds: int, sigma: float, delta: float, q: float = 1.0) -> float:
    """Epsilon after ``rounds`` Gaussian mechanisms (noise multiplier ``sigma``, sampling
    rate ``q``) at ``delta``: Opacus' RDP accountant; inf without noise."""
    if sigma <= 0:
        return math.inf
    try:
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    except ImportError:  # pragma: no cover - the privacy extra is part of make install
        raise PsflError("privacy accounting needs opacus: pip install 'psfl[privacy]'") from None
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=rounds, orders=ORDERS)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)
