"""Numerical safety (issue 12, item 5): PLD's adaptive weights, zeta and the link cost stay
finite and in their bounds over the whole accepted input range (property tests)."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psfl.config import SNR_RANGE
from psfl.fl.agp import pruning_ratio
from psfl.fl.energy import SNR_TRACES, link_cost
from psfl.fl.pld import adaptive_distillation_loss, adaptive_semantic_loss

losses = st.one_of(st.just(0.0), st.just(math.inf), st.floats(0, 1e30))
snr = st.floats(*SNR_RANGE)


@settings(max_examples=200, deadline=None)
@given(losses, losses, st.floats(1e-12, 1e-2), st.floats(0.1, 10))
def test_pld_adaptive_terms_stay_finite_when_a_task_loss_is_zero_or_explodes(la, lb, eps, temp):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    dis = adaptive_distillation_loss(a, b, torch.tensor(la), temp, eps)
    S = torch.randn(2, 3, generator=g)
    sem = adaptive_semantic_loss(S, S + 1, S, S - 1, torch.tensor(la), torch.tensor(lb), eps)
    assert torch.isfinite(dis) and dis >= 0 and torch.isfinite(sem) and sem >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(snr, min_size=1, max_size=20), snr, snr, st.floats(0, 0.5), st.floats(0.5, 0.99))
def test_zeta_stays_in_its_bounds(snrs, p1, p2, zmin, zmax):
    lo, hi = min(p1, p2), max(p1, p2)
    if hi - lo < 1e-6:
        hi = lo + 1.0
    z = pruning_ratio(snrs, lo, hi, zmin, zmax)
    assert zmin <= z <= zmax


@settings(max_examples=200, deadline=None)
@given(snr, st.floats(1e3, 1e11), st.floats(1e-6, 1e3), st.integers(1, 10_000))
def test_link_cost_is_finite_and_positive_over_the_accepted_range(s, bw, p, n):
    c = link_cost(b"x" * n, s, bw, p)
    assert c.bits == 8 * n and 0 < c.rate_bps < math.inf and 0 < c.energy_j < math.inf


def test_snr_traces_stay_in_the_configured_range():
    import numpy as np

    for name in SNR_TRACES.names():
        v = SNR_TRACES.get(name)(np.random.default_rng(0), 50, SNR_RANGE[0], SNR_RANGE[1])
        assert np.all(np.isfinite(v)) and v.min() >= SNR_RANGE[0] and v.max() <= SNR_RANGE[1], name
