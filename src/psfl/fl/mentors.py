"""Personalised mentor selection: a rule maps each client's resources to GSC-M/L/H.

Rules are registered by name. ``table1`` reproduces Table I: clients ranked by data
volume, the smallest 4/9 get GSC-M, the next 3/9 GSC-L, the largest 2/9 GSC-H (with the
Table I volumes: clients 0-3 M, 4-6 L, 7-8 H). An optional per-client compute budget
caps the tier (0 = M at most, 1 = L at most, 2 = H). ``uniform-M`` gives every client
GSC-M (the "PSFL without PLD" ablation of Sec. V-B).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from psfl.utils.errors import PsflError
from psfl.utils.registry import Registry

TIERS = ("M", "L", "H")
MentorRule = Callable[[Sequence[int], Sequence[int] | None], list[str]]
MENTOR_RULES: Registry[MentorRule] = Registry("mentor rule")

_TABLE1_SHARES = (4 / 9, 3 / 9, 2 / 9)  # M, L, H shares of clients in Table I


def _cap(tiers: list[str], budget: Sequence[int] | None) -> list[str]:
    if budget is None:
        return tiers
    return [TIERS[min(TIERS.index(t), int(b))] for t, b in zip(tiers, budget)]


@MENTOR_RULES.register("table1")
def table1_rule(volumes: Sequence[int], compute_budget: Sequence[int] | None = None) -> list[str]:
    k = len(volumes)
    order = np.argsort(np.asarray(volumes), kind="stable")  # small -> large
    n_m = int(round(_TABLE1_SHARES[0] * k))
    n_l = int(round((_TABLE1_SHARES[0] + _TABLE1_SHARES[1]) * k)) - n_m
    tiers = [""] * k
    for rank, cid in enumerate(order):
        tiers[cid] = "M" if rank < n_m else ("L" if rank < n_m + n_l else "H")
    return _cap(tiers, compute_budget)


@MENTOR_RULES.register("uniform-M")
def uniform_m_rule(volumes: Sequence[int], compute_budget: Sequence[int] | None = None) -> list[str]:
    return ["M"] * len(volumes)


def assign_mentors(volumes: Sequence[int], rule: str = "table1", overrides: Sequence[str] = (),
                   compute_budget: Sequence[int] | None = None) -> list[str]:
    """Mentor tier per client; ``overrides`` (one tier per client) wins over the rule."""
    if overrides:
        bad = [t for t in overrides if t not in TIERS]
        if bad:
            raise PsflError(f"model.mentors: unknown tier(s) {bad}; use M, L or H")
        if len(overrides) != len(volumes):
            raise PsflError(f"model.mentors: {len(overrides)} tiers for {len(volumes)} clients")
        return list(overrides)
    return MENTOR_RULES.get(rule)(volumes, compute_budget)
