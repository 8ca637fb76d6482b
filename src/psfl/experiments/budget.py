"""What a ``psfl reproduce`` plan costs, from measured round times only.

Every finished round of a run records its wall time (``time_s`` in ``metrics.jsonl``, one
torch thread per run as the scales set it). A planned run's cost is the time its recorded
rounds took plus, for the rounds still to do, the mean round time of the best reference:

1. the run itself, when it has recorded rounds;
2. else every run that costs the same per round: the same dataset, method and the fields
   of :data:`COST_FIELDS` (models, local work, evaluation sizes), among the planned runs
   and the run folders under ``timings`` (e.g. another scale's runs: its learning rates
   and MSE weight differ, its cost does not). A run whose stored models are not the ones
   its config builds today (a ``stale`` run) is never a reference.

No FLOP count or guess stands in: a run without a reference is listed as such. The wall
time of ``--jobs J`` is the makespan of the rest handed, in plan order, to the worker that
is free first (the way the workers take runs from the queue).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from psfl.config import RunConfig, _get, load_config
from psfl.utils.errors import PsflError

# fields that change what one round costs; learning rates, loss weights, seeds, Dirichlet r,
# a held-out validation split (the scored images are eval_samples either way) and the round
# count do not (a method's own switches are part of its name: psfl-no-pld)
COST_FIELDS = ("method", "data.dataset", "data.num_clients", "data.sizes", "data.local_test_fraction",
               "data.eval_samples", "data.local_eval_samples", "model.family",
               "model.student", "model.mentor_rule", "model.mentors", "model.bandwidth_ratio",
               "train.local_steps", "train.local_epochs", "train.batch_size", "channel.name")


def cost_key(cfg: RunConfig) -> tuple[tuple[str, str], ...]:
    return tuple((f, repr(_get(cfg, f))) for f in COST_FIELDS)


def round_times(folder: Path) -> list[float]:
    """The recorded wall time of each finished round of the run in ``folder`` ([] if none)."""
    from psfl.runners.inprocess import METRICS, read_records

    try:
        return [float(r["time_s"]) for r in read_records(Path(folder) / METRICS, quiet=True) if "time_s" in r]
    except (ValueError, OSError, KeyError, TypeError, PsflError):  # unreadable: no times
        return []


@dataclass
class RunCost:
    key: str
    rounds: int  # planned
    done: int  # recorded
    spent_s: float  # the recorded rounds' time
    per_round_s: float | None  # the reference's mean round time (None: no reference)
    source: str  # "own rounds", "N runs of the same cost" or "" (no reference)

    @property
    def rest_s(self) -> float | None:
        left = max(self.rounds - self.done, 0)
        if not left:
            return 0.0
        return None if self.per_round_s is None else left * self.per_round_s


def _references(runs: Sequence[Any], timings: Sequence[Path]) -> dict[tuple, list[list[float]]]:
    """Per cost key, the round times of every usable run: the planned ones and those found
    under ``timings`` (any folder holding config.toml + metrics.jsonl)."""
    from psfl.runners.inprocess import stored_models_problem

    pool: dict[tuple, list[list[float]]] = {}
    seen: set[Path] = set()
    found: list[tuple[RunConfig, Path]] = [(r.cfg, Path(r.path)) for r in runs]
    for root in timings:
        if not Path(root).is_dir():
            raise PsflError(f"--timings {root}: no such folder")
        for cfg_file in sorted(Path(root).rglob("config.toml")):
            if not (cfg_file.parent / "metrics.jsonl").is_file():
                continue
            try:
                found.append((load_config(cfg_file), cfg_file.parent))
            except PsflError:  # a config this version cannot read: not a reference
                continue
    for cfg, folder in found:
        folder = folder.resolve()
        times = round_times(folder) if folder not in seen else []
        seen.add(folder)
        if times and not stored_models_problem(cfg, folder):
            pool.setdefault(cost_key(cfg), []).append(times)
    return pool


def project(runs: Sequence[Any], timings: Sequence[Path] = ()) -> list[RunCost]:
    """The cost of each planned run (:class:`psfl.experiments.reproduce.PlannedRun`)."""
    from psfl.runners.inprocess import stored_models_problem

    pool = _references(runs, timings)
    out = []
    for r in runs:
        own = [] if stored_models_problem(r.cfg, r.path) else round_times(r.path)[:r.cfg.rounds]
        if own:
            per, source = sum(own) / len(own), "own rounds"
        elif refs := pool.get(cost_key(r.cfg)):
            per = sum(map(sum, refs)) / sum(map(len, refs))
            source = f"{len(refs)} run{'s' * (len(refs) > 1)} of the same cost"
        else:
            per, source = None, ""
        out.append(RunCost(r.key, r.cfg.rounds, len(own), sum(own), per, source))
    return out


def makespan(seconds: Sequence[float], jobs: int) -> float:
    """Wall time of ``jobs`` workers that each take the next item when free (list order)."""
    free = [0.0] * max(jobs, 1)
    for s in seconds:
        heapq.heapreplace(free, free[0] + s)
    return max(free)


def budget_lines(costs: Sequence[RunCost], jobs: int, datasets: dict[str, str]) -> list[str]:
    """A plain-text summary: per dataset (``datasets``: run key -> dataset) the runs, the
    compute recorded and the compute projected for the rest; then the wall time at ``jobs``."""
    rows: dict[str, list[RunCost]] = {}
    for c in costs:
        rows.setdefault(datasets[c.key], []).append(c)
    out = ["compute (core-hours; one thread per run; round times as recorded on the machines that made them):",
           f"  {'dataset':<15} {'runs':>5} {'finished':>9} {'recorded':>9} {'rest':>8}  without a reference"]
    for ds, cs in [*rows.items(), ("all", list(costs))]:
        rest = [c.rest_s for c in cs]
        missing = [c.key for c in cs if c.rest_s is None]
        finished = sum(c.done >= c.rounds for c in cs)
        out.append(f"  {ds:<15} {len(cs):>5} {finished:>9} {sum(c.spent_s for c in cs) / 3600:>9.2f} "
                   f"{sum(s for s in rest if s is not None) / 3600:>8.2f}  "
                   + (f"{len(missing)} (e.g. {missing[0]})" if missing else "-"))
    rest = [c.rest_s for c in costs]
    known = [s for s in rest if s is not None]
    wall = makespan(known, jobs) / 3600
    note = "" if len(known) == len(rest) else f" (+ {len(rest) - len(known)} runs without a reference)"
    out.append(f"  the rest at --jobs {jobs}: about {wall:.2f} h wall{note}")
    return out
