"""`psfl tune`: the same small grid and budget for every method, chosen on validation data.

Every method runs every point of one grid (e.g. ``train.lr`` x ``train.mse_weight``) with
the same budget and seeds, scored on held-out *training* images
(``data.validation_samples`` > 0 is required: the test split is never looked at); the
point with the highest mean over seeds of the last-``last``-round global accuracy (the
independent scorer) is the method's choice. A field the method does not read under its
config (``FederatedMethod.unused_fields``, e.g. ``train.student_lr`` for a GSC contender)
is left at its default for that method, so its grid is the grid's other axes.

Outputs in ``OUT``: one run folder per (method, point, seed) (resumable: a finished run is
kept, an interrupted one resumed), ``grid.csv`` (every point's score per seed),
``choices.json`` (per method: the chosen overrides, its score, the grid, the budget) and
``choices.md``. A later call on the same ``OUT`` with the same grid and budget adds its
methods to these (so the grid can be run piecewise, disjoint ``--methods`` per process);
one with another grid or budget is refused.
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from psfl.config import RunConfig, load_config
from psfl.utils.errors import PsflError


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["train.lr=0.01,0.03", "train.mse_weight=1,4"]`` -> ``{field: [values]}``."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise PsflError(f"--grid {spec!r}: use FIELD=V1,V2,...")
        if key.strip() in grid:
            raise PsflError(f"--grid {key.strip()}: given twice")
        grid[key.strip()] = vals
    if not grid:
        raise PsflError("--grid: give at least one FIELD=V1,V2,...")
    return grid


def method_points(cfg: RunConfig, method: str, grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """The grid points ``method`` can tell apart: fields it does not read are dropped."""
    from psfl.methods import METHODS

    unused = set(METHODS.get(method).unused_fields(replace(cfg, method=method)))
    axes = {k: v for k, v in grid.items() if k not in unused}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]


def point_name(point: dict[str, str]) -> str:
    return "+".join(f"{k}={v}" for k, v in point.items()) or "defaults"


_BUDGET_KEYS = ("grid", "seeds", "rounds", "last", "local_steps", "validation_samples")


def _earlier_choices(out: Path, summary: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The choices and grid rows an earlier call wrote to ``out`` (none if it holds none);
    refuses them when they were made with another grid or budget."""
    path = out / "choices.json"
    if not path.is_file():
        return {}, []
    old = json.loads(path.read_text())
    differ = [k for k in _BUDGET_KEYS if old.get(k) != summary[k]]
    if differ:
        raise PsflError(f"{path} holds choices made with another {', '.join(differ)}; "
                        "use another --out (or move it away)")
    rows: list[dict[str, Any]] = []
    if (out / "grid.csv").is_file():
        with (out / "grid.csv").open(newline="") as f:
            rows = [{**r, "seed": int(r["seed"]), "score": float(r["score"])} for r in csv.DictReader(f)]
    return dict(old.get("choices", {})), rows


def tune(cfg: RunConfig, methods: Sequence[str], grid: dict[str, list[str]], seeds: Sequence[int], out: Path,
         last: int = 5, progress: bool = True, device: Any = "cpu",
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid for every method (module docstring); returns the choices."""
    from psfl.methods import METHODS, check_run_config
    from psfl.runners.inprocess import holds_results, read_records, run_federated

    if cfg.data.validation_samples <= 0:
        raise PsflError("psfl tune chooses on validation data: set data.validation_samples (e.g. 5000); "
                        "the test split is never used for tuning")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PsflError(f"unknown method(s) {unknown}; known: {', '.join(METHODS.names())}")
    if last < 1 or last > cfg.rounds:
        raise PsflError(f"--last must be in [1, rounds = {cfg.rounds}], got {last}")
    out.mkdir(parents=True, exist_ok=True)
    budget = {"grid": grid, "seeds": list(seeds), "rounds": cfg.rounds, "last": last,
              "local_steps": cfg.train.local_steps, "validation_samples": cfg.data.validation_samples}
    earlier, earlier_rows = _earlier_choices(out, budget)  # refused before any run
    rows: list[dict[str, Any]] = []
    choices: dict[str, Any] = {}
    for m in methods:
        scored = []
        for point in method_points(cfg, m, grid):
            per_seed = []
            for seed in seeds:
                # a copy: load_config writes into its base, and one method's point must not
                # leak into the next method's runs
                run_cfg = check_run_config(load_config(None, [f'method="{m}"', f"seed={seed}",
                                                              *(f"{k}={v}" for k, v in point.items())],
                                                       base=copy.deepcopy(cfg)))
                run_dir = out / m / point_name(point) / f"seed{seed}"
                done = read_records(run_dir / "metrics.jsonl", quiet=True)
                if len(done) < run_cfg.rounds:
                    log(f"{'resume' if holds_results(run_dir) else 'start'} {m} {point_name(point)} seed {seed}")
                    run_federated(run_cfg, run_dir, resume=holds_results(run_dir), progress=progress,
                                  device=device)
                    done = read_records(run_dir / "metrics.jsonl")
                score = float(np.mean([r["global"]["accuracy"] for r in done[run_cfg.rounds - last:run_cfg.rounds]]))
                per_seed.append(score)
                rows.append({"method": m, "point": point_name(point), "seed": seed, "score": score})
            scored.append((float(np.mean(per_seed)), point, per_seed))
        best = max(scored, key=lambda s: s[0])  # the first of equal scores
        choices[m] = {"set": [f"{k}={v}" for k, v in best[1].items()], "score": best[0], "per_seed": best[2],
                      "points": {point_name(p): s for s, p, _ in scored}}
    rows = [r for r in earlier_rows if r["method"] not in choices] + rows
    choices = {**{m: c for m, c in earlier.items() if m not in choices}, **choices}
    summary = {**budget,
               "score": f"mean over seeds of the last-{last}-round global accuracy (independent scorer) on "
                        f"{cfg.data.validation_samples} held-out training images",
               "choices": choices}
    with (out / "grid.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "point", "seed", "score"])
        w.writeheader()
        w.writerows(rows)
    (out / "choices.json").write_text(json.dumps(summary, indent=2) + "\n")
    axes = ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in grid.items())
    lines = [f"# Tuned on validation data: {summary['score']}", "",
             f"Grid (every method): {axes}; "
             f"budget {cfg.rounds} rounds x {cfg.train.local_steps} local steps, seeds {', '.join(map(str, seeds))}.",
             "", "| method | choice | score | every point |", "|---|---|---:|---|"]
    for m, c in choices.items():
        pts = "; ".join(f"{p}: {s:.3f}" for p, s in c["points"].items())
        lines.append(f"| {m} | {' '.join(c['set']) or 'defaults'} | {c['score']:.3f} | {pts} |")
    (out / "choices.md").write_text("\n".join(lines) + "\n")
    return summary
