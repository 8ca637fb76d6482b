"""Communication model, Eqs. 12-14, and per-round SNR traces.

Z (bits) is always the length of the bytes actually serialized for an upload; nothing
here estimates it from parameter counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from psfl.channel import db_to_linear
from psfl.utils.registry import Registry


def uplink_rate(bandwidth_hz: float, snr_db: float) -> float:
    """Eq. 12: v = B log2(1 + psi), psi linear (converted from dB)."""
    return bandwidth_hz * math.log2(1.0 + float(db_to_linear(snr_db)))


def transmission_delay(bits: int, rate_bps: float) -> float:
    """Eq. 13: tau = Z / v."""
    return bits / rate_bps


def communication_energy(power_w: float, delay_s: float) -> float:
    """Eq. 14: E = P tau."""
    return power_w * delay_s


@dataclass(frozen=True)
class LinkCost:
    bits: int
    rate_bps: float
    delay_s: float
    energy_j: float


def link_cost(payload: bytes, snr_db: float, bandwidth_hz: float, power_w: float) -> LinkCost:
    """Eqs. 12-14 for one serialized upload: Z = 8 * len(payload)."""
    bits = 8 * len(payload)
    v = uplink_rate(bandwidth_hz, snr_db)
    tau = transmission_delay(bits, v)
    return LinkCost(bits, v, tau, communication_energy(power_w, tau))


# SNR traces: trace(rng, num_clients, lo_db, hi_db) -> (K,) SNRs in dB for one round.
SNR_TRACES: Registry[Callable[[np.random.Generator, int, float, float], np.ndarray]] = Registry("SNR trace")


@SNR_TRACES.register("uniform")
def uniform_trace(rng: np.random.Generator, k: int, lo: float, hi: float) -> np.ndarray:
    """Independent per client, per round, uniform in [lo, hi] dB (the paper's 0-25 dB)."""
    return rng.uniform(lo, hi, size=k)


@SNR_TRACES.register("fixed")
def fixed_trace(rng: np.random.Generator, k: int, lo: float, hi: float) -> np.ndarray:
    """Every client at the midpoint SNR every round (a static-channel control)."""
    return np.full(k, (lo + hi) / 2.0)


def round_snrs(trace: str, seed: int, rnd: int, k: int, lo: float, hi: float) -> np.ndarray:
    """The seeded SNR draw of round ``rnd``: a function of (seed, round) only, so every
    method compared under one seed sees the same trace and a resumed run sees it too."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A1, rnd]))
    return SNR_TRACES.get(trace)(rng, k, lo, hi)
