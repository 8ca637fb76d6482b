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
``choices.md``, written as each method's points are all scored (an interrupted call keeps
the methods it finished). A later call on the same ``OUT`` with the same grid and budget adds its
methods to these (so the grid can be run piecewise, disjoint ``--methods`` per process);
one with another grid or budget is refused.

``widen`` > 0 goes on past the grid where the choice sits on an edge of it: along each
axis in turn (the others held at the choice), while the chosen value is the axis's lowest
or highest value tried, one more value outward (the grid's own ratio: 0.01, 0.03 -> 0.09 or
0.0033) is run, up to ``widen`` values per side; it becomes the choice only if it scores
higher. Every method goes through the same steps. The choice then records ``grid_set``
(the grid's own choice), the extra ``widened`` points and ``on_edge`` (the axes where it
still sits on the edge of what was tried: a wider search may still move it).

``reuse`` names other tune folders whose finished runs stand in for this call's (read,
never written; the first folder holding the point's run is used; each one's stored config
must equal the point's, or it is refused), so that widening an earlier grid (or an earlier
widening of it, with a larger ``widen``) re-runs none of its points. Every run a score rests on
must hold the stored config of its point: a finished run made with another config is
refused, never scored.

Chance: a point's score is compared with what the scorer reaches on any constant
reconstruction (the most frequent class's share of the scored validation images, over the
seeds) plus 3 binomial standard deviations (``psfl.evaluate.baselines.chance_bound``). A
method whose best point is not above that bound is recorded ``above_chance: false`` and
said so: no point of it learned within the budget, and its choice (the highest of
chance-level scores) is not a tuned setting.

``evaluators`` (a folder, as for ``psfl reproduce``): the classifiers kept there go into
the evaluator cache before any run, and the ones every scored run used are copied there
afterwards, so that a grid finished on another machine trains against and is scored by
the same classifiers (two trainings on different CPUs drift apart).
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

from psfl.config import RunConfig, diff_configs, load_config
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


_BUDGET_KEYS = ("grid", "seeds", "rounds", "last", "local_steps", "validation_samples", "widen")
_DEFAULTS = {"widen": 0}  # a key that choices written before it existed do not hold


def _earlier_choices(out: Path, summary: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The choices and grid rows an earlier call wrote to ``out`` (none if it holds none);
    refuses them when they were made with another grid or budget."""
    path = out / "choices.json"
    if not path.is_file():
        return {}, []
    old = json.loads(path.read_text())
    differ = [k for k in _BUDGET_KEYS if old.get(k, _DEFAULTS.get(k)) != summary[k]]
    if differ:
        raise PsflError(f"{path} holds choices made with another {', '.join(differ)}; "
                        "use another --out (or move it away)")
    rows: list[dict[str, Any]] = []
    if (out / "grid.csv").is_file():
        with (out / "grid.csv").open(newline="") as f:
            rows = [{**r, "seed": int(r["seed"]), "score": float(r["score"])} for r in csv.DictReader(f)]
    return dict(old.get("choices", {})), rows


def _outward(values: list[str], up: bool) -> str:
    """The next value past the highest (``up``) or lowest of an axis's ``values``, at the
    ratio of its two outermost values on that side (0.01, 0.03 -> 0.09 up, 0.0033 down)."""
    nums = sorted(float(v) for v in values)
    a, b = (nums[-2], nums[-1]) if up else (nums[1], nums[0])
    return f"{b * b / a:.4g}"


def _widenable(grid: dict[str, list[str]]) -> None:
    for k, vals in grid.items():
        try:
            nums = [float(v) for v in vals]
        except ValueError:
            raise PsflError(f"--widen: axis {k} has a value that is not a number ({', '.join(vals)})") from None
        if len(set(nums)) < 2 or min(nums) <= 0:
            raise PsflError(f"--widen: axis {k} needs two or more distinct positive values to widen by their ratio")


def _finite(x: float) -> float | None:
    """A diverged point's score (never chosen) is written as null, not as a number."""
    return x if np.isfinite(x) else None


def _on_edge(point: dict[str, str], tried: dict[str, list[str]]) -> list[str]:
    """The axes where ``point``'s value is the lowest or highest value tried."""
    out = []
    for k, v in point.items():
        nums = [float(x) for x in tried[k]]
        if len(nums) > 1 and float(v) in (min(nums), max(nums)):
            out.append(k)
    return out


def _write_choices(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write a tune folder's ``grid.csv`` (``rows``), ``choices.json`` (``summary``: the
    budget, the score's description and the choices) and ``choices.md``."""
    grid, widen, choices = summary["grid"], summary["widen"], summary["choices"]
    with (out / "grid.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "point", "seed", "score", "run"], restval="")
        w.writeheader()
        w.writerows(rows)
    (out / "choices.json").write_text(json.dumps(summary, indent=2) + "\n")
    axes = ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in grid.items())
    lines = [f"# Tuned on validation data: {summary['score']}", "",
             f"Grid (every method): {axes}; "
             f"budget {summary['rounds']} rounds x {summary['local_steps']} local steps, "
             f"seeds {', '.join(map(str, summary['seeds']))}"
             + (f"; widened by up to {widen} value(s) per side where the choice sat on the grid's edge"
                if widen else "")
             + ".", "", "| method | choice | score | above chance | grid's choice | still on the edge | every point |",
             "|---|---|---:|---|---|---|---|"]
    for m, c in choices.items():
        pts = "; ".join(f"{p}: {'diverged' if s is None else f'{s:.3f}'}" for p, s in c["points"].items())
        grid_set = " ".join(c.get("grid_set", c["set"])) or "defaults"
        edge = (", ".join(c["on_edge"]) or "none") if "on_edge" in c else "not recorded"
        choice = " ".join(c["set"]) or "defaults"
        above = (("yes" if c["above_chance"] else "**no**") + f" (bound {c['chance']['bound']:.3f})"
                 if "chance" in c else "not recorded")
        lines.append(f"| {m} | {choice} | {c['score']:.3f} | {above} | {grid_set} | {edge} | {pts} |")
    (out / "choices.md").write_text("\n".join(lines) + "\n")


def tune(cfg: RunConfig, methods: Sequence[str], grid: dict[str, list[str]], seeds: Sequence[int], out: Path,
         last: int = 5, progress: bool = True, device: Any = "cpu", widen: int = 0, reuse: Sequence[Path] = (),
         evaluators: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid for every method (module docstring); returns the choices."""
    from psfl.evaluate.baselines import chance_bound
    from psfl.evaluate.evaluator import share_evaluators
    from psfl.experiments.reproduce import IGNORED_FIELDS
    from psfl.methods import METHODS, check_run_config
    from psfl.methods.base import global_accuracy_baselines
    from psfl.runners.inprocess import CONFIG, holds_results, read_records, run_federated
    from psfl.utils.errors import DivergenceError
    from psfl.utils.lock import wait_lock

    if cfg.data.validation_samples <= 0:
        raise PsflError("psfl tune chooses on validation data: set data.validation_samples (e.g. 5000); "
                        "the test split is never used for tuning")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PsflError(f"unknown method(s) {unknown}; known: {', '.join(METHODS.names())}")
    if last < 1 or last > cfg.rounds:
        raise PsflError(f"--last must be in [1, rounds = {cfg.rounds}], got {last}")
    if widen < 0:
        raise PsflError(f"--widen must be >= 0, got {widen}")
    if widen:
        _widenable(grid)
    budget = {"grid": grid, "seeds": list(seeds), "rounds": cfg.rounds, "last": last,
              "local_steps": cfg.train.local_steps, "validation_samples": cfg.data.validation_samples,
              "widen": widen}
    reuse = [Path(r) for r in reuse]
    for r in reuse:
        if r.resolve() == Path(out).resolve():
            raise PsflError("--reuse names the --out folder itself; its finished runs are kept anyway")
        if not (r / "choices.json").is_file():
            raise PsflError(f"--reuse {r}: no choices.json there (not a psfl tune folder)")
        theirs = json.loads((r / "choices.json").read_text())
        differ = [k for k in _BUDGET_KEYS if k != "widen" and theirs.get(k) != budget[k]]
        if differ:
            raise PsflError(f"--reuse {r}: its runs were made with another {', '.join(differ)}")
    out.mkdir(parents=True, exist_ok=True)
    _earlier_choices(out, budget)  # another grid or budget is refused before any run
    if evaluators is not None:  # every machine the grid is run on trains and scores with the same ones
        share_evaluators(evaluators, [cfg.evaluator.cache_dir or None], (), log, who="psfl tune")
    header = {**budget,
              "score": f"mean over seeds of the last-{last}-round global accuracy (independent scorer) on "
                       f"{cfg.data.validation_samples} held-out training images",
              **({"reuse": [str(r) for r in reuse]} if reuse else {})}
    rows: list[dict[str, Any]] = []
    choices: dict[str, Any] = {}
    chance_of: dict[tuple[str, int], tuple[dict[str, float], int]] = {}  # (data config, seed) -> baselines, images

    def chance(run_cfgs: list[RunConfig]) -> dict[str, float]:
        """Over the seeds' runs of a point: the majority-class share of the scored images
        (their mean), their number (in all) and the bound a score must exceed."""
        got = []
        for rc in run_cfgs:
            key = (repr(rc.data), rc.seed)
            if key not in chance_of:
                chance_of[key] = global_accuracy_baselines(rc)
            got.append(chance_of[key])
        p = float(np.mean([b["majority_class"] for b, _ in got]))
        n = sum(k for _, k in got)
        return {"majority_class": p, "images": n, "bound": chance_bound(p, n)}

    def finished(run_dir: Path, run_cfg: RunConfig) -> list[dict[str, Any]]:
        """The run's records if it is finished with the point's config (refused if made
        with another), else []."""
        done = read_records(run_dir / "metrics.jsonl", quiet=True)
        if len(done) < run_cfg.rounds:
            return []
        stored = load_config(run_dir / CONFIG)
        diffs = [f for f in diff_configs(stored, run_cfg) if f not in IGNORED_FIELDS]
        if diffs:
            raise PsflError(f"{run_dir} holds a finished run with another config ({', '.join(diffs)} differ "
                            "from this point's); move it away or use another --out")
        return done

    def run_config(m: str, point: dict[str, str], seed: int) -> RunConfig:
        # a copy: load_config writes into its base, and one method's point must not
        # leak into the next method's runs
        return check_run_config(load_config(None, [f'method="{m}"', f"seed={seed}",
                                                   *(f"{k}={v}" for k, v in point.items())],
                                            base=copy.deepcopy(cfg)))

    def score(m: str, point: dict[str, str]) -> tuple[float, list[float]]:
        per_seed = []
        for seed in seeds:
            run_cfg = run_config(m, point, seed)
            where = Path(m) / point_name(point) / f"seed{seed}"
            run_dir = out / where
            done, src = [], str(run_dir)
            for r in ([] if holds_results(run_dir) else reuse):
                done = finished(r / where, run_cfg)
                if done:
                    src = str(r / where)
                    break
            done = done or finished(run_dir, run_cfg)
            if not done:
                log(f"{'resume' if holds_results(run_dir) else 'start'} {m} {point_name(point)} seed {seed}")
                try:
                    run_federated(run_cfg, run_dir, resume=holds_results(run_dir), progress=progress,
                                  device=device)
                    done = read_records(run_dir / "metrics.jsonl")
                except DivergenceError as e:  # a point of the grid may diverge: it cannot be chosen
                    log(f"{m} {point_name(point)} seed {seed}: {e}; scored as diverged (never chosen)")
            s = (float(np.mean([r["global"]["accuracy"] for r in done[run_cfg.rounds - last:run_cfg.rounds]]))
                 if done else float("nan"))
            per_seed.append(s)
            rows.append({"method": m, "point": point_name(point), "seed": seed, "score": s, "run": src})
        mean = float(np.mean(per_seed))
        return (mean if np.isfinite(mean) else float("-inf")), per_seed

    def publish() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Merge this call's choices so far into the folder's and write them (the merged
        summary and rows)."""
        with wait_lock(out / ".choices.lock"):
            # read again under the folder's lock: another process on it may have written its methods meanwhile
            earlier, earlier_rows = _earlier_choices(out, budget)
            merged_rows = [r for r in earlier_rows if r["method"] not in choices] + rows
            merged = {**{m: c for m, c in earlier.items() if m not in choices}, **choices}
            summary = {**header, "choices": merged}
            _write_choices(out, summary, merged_rows)
            return summary, merged_rows

    for m in methods:
        points = method_points(cfg, m, grid)
        scored = {point_name(p): (*score(m, p), p) for p in points}
        best_name = max(scored, key=lambda n: scored[n][0])  # the first of equal scores
        grid_name = best_name
        tried = {k: list(v) for k, v in grid.items() if k in points[0]}
        widened: dict[str, float] = {}
        for axis in tried:
            for up in (False, True):
                for _ in range(widen):
                    current = scored[best_name][2]
                    nums = [float(v) for v in tried[axis]]
                    if float(current[axis]) != (max(nums) if up else min(nums)):
                        break
                    value = _outward(tried[axis], up)
                    tried[axis].append(value)
                    point = {**current, axis: value}
                    scored[point_name(point)] = (*score(m, point), point)
                    widened[point_name(point)] = scored[point_name(point)][0]
                    if scored[point_name(point)][0] <= scored[best_name][0]:
                        break  # the choice stays; the axis is no longer on the edge on this side
                    best_name = point_name(point)
        best = scored[best_name]
        if not np.isfinite(best[0]):
            raise PsflError(f"psfl tune: every point of {m} diverged; nothing to choose")
        at = chance([run_config(m, best[2], s) for s in seeds])
        if best[0] <= at["bound"]:
            log(f"psfl tune: {m}: no point rose above chance (best {best[0]:.3f} <= {at['bound']:.3f}: the "
                f"most frequent class's share {at['majority_class']:.3f} of the scored images + 3 sd); its "
                "choice is not a tuned setting at this budget")
        choices[m] = {"set": [f"{k}={v}" for k, v in best[2].items()], "score": best[0], "per_seed": best[1],
                      "chance": at, "above_chance": bool(best[0] > at["bound"]),
                      "points": {n: _finite(s[0]) for n, s in scored.items()},
                      "grid_set": [f"{k}={v}" for k, v in scored[grid_name][2].items()],
                      "widened": {n: _finite(s) for n, s in widened.items()}, "on_edge": _on_edge(best[2], tried)}
        summary, merged_rows = publish()  # each method's choice is written as soon as it is made
    if evaluators is not None:
        # the evaluators of every run a score rests on (reused folders' runs included)
        share_evaluators(evaluators, (), (Path(r["run"]) / "provenance.json" for r in merged_rows), log,
                         who="psfl tune")
    return summary
