"""`psfl reproduce`: the paper's Section V (Figs. 4-13) as declarative experiments.

An *experiment* (``experiments/reproduce/<name>.toml``) names a figure kind
(:data:`psfl.experiments.figures.FIGURES`), the datasets of its panels, the metrics it draws and its
*series*: a label, a method and ``--set`` overrides (e.g. ``data.alpha=0.3``). A *scale*
(``scale-<name>.toml``) is the base run config (``[config]``) with per-dataset overrides
(``[datasets.<name>] set = [...]``); it may extend another scale (``extends = "cpu"``) and
take each method's settings from ``psfl tune`` (``tuned = "<choices.json>"``, with
``[tuned_as]`` naming whose choice a method takes, e.g. an ablation its full method's):
the tuned settings belong to the scale, so they do not name the run folders. A scale
may cut its budget (``[experiments.<name>]``: ``datasets = [...]``, run that experiment on
these only; ``drop = ["<series label>", ...]``, without these series); ``--full`` ignores
the cuts, and figures and claims draw every finished run.

Every (dataset, series, seed) is one federated run, stored once under
``RUNS/<scale>/<dataset>/<run name>/seed<k>/`` where the run name is the method plus the
fields that differ from the scale's config: the PSFL run at r = 0.9 of Fig. 4 is the same
folder as in Figs. 5 and 7-12. Runs are resumable: a finished run is skipped, an
interrupted one resumed from its checkpoint, a folder made with another config refused.
Several workers (``--jobs``) share the runs through the run folders' locks.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from psfl.config import RunConfig, _apply, _get, diff_configs, load_config, tomllib
from psfl.utils.errors import PsflError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[3] / "experiments" / "reproduce"
IGNORED_FIELDS = ("threads", "data.data_dir", "evaluator.cache_dir")  # do not change a run's numbers


@dataclass
class Series:
    label: str
    method: str
    set: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # restrict to these (default: the experiment's)


@dataclass
class Experiment:
    name: str
    title: str
    plot: str
    datasets: list[str]
    series: list[Series] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)  # partition plots
    snrs: list[float] = field(default_factory=list)  # reconstruction grids (dB)
    images: int = 8  # reconstruction grids: test images per dataset
    source: str = ""  # the file it was read from

    def series_for(self, dataset: str) -> list[Series]:
        return [s for s in self.series if not s.datasets or dataset in s.datasets]


@dataclass
class Scale:
    name: str
    config: dict[str, Any]  # a RunConfig table
    datasets: dict[str, list[str]]  # per-dataset overrides
    source: str = ""
    tuned: dict[str, list[str]] = field(default_factory=dict)  # method -> its tuned overrides
    tuned_source: str = ""  # the choices.json they came from
    cuts: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # experiment -> {datasets, drop}

    def cut(self, exp: Experiment) -> Experiment:
        """``exp`` as this scale runs it (``[experiments.<name>]``: ``datasets``, the ones it
        runs on; ``drop``, series labels it leaves out): a budget cut; figures and claims
        still draw every finished run."""
        c = self.cuts.get(exp.name)
        if not c:
            return exp
        return replace(exp, datasets=[d for d in exp.datasets if d in c.get("datasets", exp.datasets)],
                       series=[s for s in exp.series if s.label not in c.get("drop", [])])

    def method_sets(self, method: str) -> list[str]:
        """The overrides every run of ``method`` gets at this scale (its tuned choice)."""
        if not self.tuned_source:
            return []
        if method not in self.tuned:
            raise PsflError(f"{self.source}: no tuned choice for method {method!r} in {self.tuned_source} "
                            f"(it has {', '.join(sorted(self.tuned)) or 'none'}); run psfl tune for it "
                            "or name the method whose choice it takes in [tuned_as]")
        return list(self.tuned[method])


@dataclass
class PlannedRun:
    dataset: str
    name: str  # method + differing fields
    seed: int
    cfg: RunConfig
    path: Path
    uses: list[tuple[str, str]] = field(default_factory=list)  # (experiment, series label)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}/seed{self.seed}"


def _checked_table(table: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise PsflError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return table


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PsflError(f"{path}: invalid TOML ({e})") from None
    except OSError as e:
        raise PsflError(f"{path}: cannot be read ({e.strerror})") from None


def experiment_names(root: Path = EXPERIMENTS_DIR) -> list[str]:
    """The experiments in ``root``, figures in numeric order, then the rest."""
    names = [p.stem for p in Path(root).glob("*.toml") if not p.stem.startswith("scale-")]

    def order(n: str) -> tuple[int, int, str]:
        m = re.fullmatch(r"fig(\d+)", n)
        return (0, int(m.group(1)), n) if m else (1, 0, n)

    return sorted(names, key=order)


def load_experiment(name: str, root: Path = EXPERIMENTS_DIR) -> Experiment:
    from psfl.data import DATASETS
    from psfl.experiments.figures import FIGURES, SERIES_METRICS
    from psfl.methods import METHODS

    path = Path(root) / f"{name}.toml"
    if not path.is_file():
        raise PsflError(f"unknown experiment {name!r}; known: {', '.join(experiment_names(root))}, all")
    t = _checked_table(_read_toml(path), Experiment, str(path))
    series = []
    for i, s in enumerate(t.pop("series", [])):
        s = _checked_table(dict(s), Series, f"{path} series {i + 1}")
        try:
            series.append(Series(**s))
        except TypeError as e:
            raise PsflError(f"{path} series {i + 1}: {e}") from None
    try:
        exp = Experiment(name=name, series=series, source=str(path), **{k: v for k, v in t.items() if k != "name"})
    except TypeError as e:
        raise PsflError(f"{path}: {e}") from None
    if exp.plot not in FIGURES:
        raise PsflError(f"{path}: plot {exp.plot!r} unknown; known: {', '.join(FIGURES.names())}")
    bad = [d for d in exp.datasets + [d for s in series for d in s.datasets] if d not in DATASETS]
    bad += [m for m in exp.metrics if m not in SERIES_METRICS]
    bad += [s.method for s in series if s.method not in METHODS]
    if bad:
        raise PsflError(f"{path}: unknown dataset, metric or method {bad[0]!r}")
    FIGURES.get(exp.plot).check(exp)
    return exp


def load_scale(name: str, root: Path = EXPERIMENTS_DIR) -> Scale:
    path = Path(root) / f"scale-{name}.toml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("scale-") for p in Path(root).glob("scale-*.toml"))
        raise PsflError(f"unknown scale {name!r}; known: {', '.join(known)}")
    t = _read_toml(path)
    keys = ("config", "datasets", "experiments", "extends", "tuned", "tuned_as")
    unknown = sorted(set(t) - set(keys))
    if unknown:
        raise PsflError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(keys)}")
    config: dict[str, Any] = {}
    per: dict[str, list[str]] = {}
    cuts: dict[str, dict[str, list[str]]] = {}
    if "extends" in t:  # another scale's config, per-dataset overrides and cuts, then this file's
        if t["extends"] == name or not isinstance(t["extends"], str):
            raise PsflError(f"{path}: extends must name another scale")
        parent = load_scale(t["extends"], root)
        config, per, cuts = copy.deepcopy(parent.config), copy.deepcopy(parent.datasets), copy.deepcopy(parent.cuts)
    _merge(config, t.get("config", {}))
    for ds, sub in t.get("datasets", {}).items():
        if set(sub) - {"set"}:
            raise PsflError(f"{path}: [datasets.{ds}] takes only set = [...]")
        per[ds] = per.get(ds, []) + list(sub.get("set", []))
    for exp_name, sub in t.get("experiments", {}).items():
        if (not isinstance(sub, dict) or not sub or set(sub) - {"datasets", "drop"}
                or not all(isinstance(v, list) for v in sub.values())):
            raise PsflError(f"{path}: [experiments.{exp_name}] takes only datasets = [...] and drop = [...]")
        if exp_name not in experiment_names(root):
            raise PsflError(f"{path}: [experiments.{exp_name}]: no such experiment; known: "
                            f"{', '.join(experiment_names(root))}")
        exp = load_experiment(exp_name, root)
        bad = [d for d in sub.get("datasets", []) if d not in exp.datasets]
        if bad:
            raise PsflError(f"{path}: [experiments.{exp_name}] datasets: {bad[0]!r} is not a dataset of "
                            f"{exp_name} ({', '.join(exp.datasets)})")
        labels = [x.label for x in exp.series]
        bad = [d for d in sub.get("drop", []) if d not in labels]
        if bad:
            raise PsflError(f"{path}: [experiments.{exp_name}] drop: {bad[0]!r} is not a series of "
                            f"{exp_name} ({', '.join(labels)})")
        cuts[exp_name] = {k: list(v) for k, v in sub.items()}
    scale = Scale(name, config, per, str(path), cuts=cuts)
    if "tuned" in t:
        scale.tuned, scale.tuned_source = _tuned_choices(path, t["tuned"], t.get("tuned_as", {})), str(t["tuned"])
    elif "tuned_as" in t:
        raise PsflError(f"{path}: tuned_as needs tuned = \"<choices.json>\"")
    return scale


def cut_text(exp: Experiment, kept: Experiment) -> str:
    """What a cut leaves out of ``exp`` (``kept``: :meth:`Scale.cut` of it), in words."""
    parts = []
    gone = [d for d in exp.datasets if d not in kept.datasets]
    if gone:
        parts.append(f"not on {', '.join(gone)}")
    dropped = [s.label for s in exp.series if s not in kept.series]
    if dropped:
        parts.append(f"without {', '.join(dropped)}")
    return "; ".join(parts) or "nothing left out"


def _merge(into: dict[str, Any], table: dict[str, Any]) -> None:
    for k, v in table.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _tuned_choices(scale_path: Path, file: str, tuned_as: dict[str, str]) -> dict[str, list[str]]:
    """Per method, the overrides ``psfl tune`` chose (``file``: its choices.json, relative to
    the repository root or absolute); ``tuned_as`` maps a method to the one whose choice
    it takes (an ablation takes its full method's)."""
    path = Path(file) if Path(file).is_absolute() else EXPERIMENTS_DIR.parents[1] / file
    if not path.is_file():
        raise PsflError(f"{scale_path}: tuned = {file!r}: no such file (psfl tune writes it)")
    try:
        choices = {m: list(c["set"]) for m, c in json.loads(path.read_text())["choices"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise PsflError(f"{scale_path}: {path} is not a psfl tune choices.json ({e})") from None
    for method, source in tuned_as.items():
        if source not in choices:
            raise PsflError(f"{scale_path}: tuned_as {method} = {source!r}: {path} has no choice for {source!r}")
        choices[method] = choices[source]
    return choices


def base_config(scale: Scale, dataset: str, extra: Sequence[str] = ()) -> RunConfig:
    """The scale's config for ``dataset`` (+ per-dataset and user overrides), validated."""
    cfg = RunConfig()
    try:
        _apply(cfg, copy.deepcopy(scale.config))
    except PsflError as e:
        raise PsflError(f"{scale.source}: {e}") from None
    return load_config(None, [f'data.dataset="{dataset}"', *scale.datasets.get(dataset, []), *extra], base=cfg)


def _value(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")


def run_name(cfg: RunConfig, base: RunConfig) -> str:
    """``method`` plus ``+field=value`` for each field that differs from ``base`` (the
    scale's config of that dataset), fields in sorted order: one folder per distinct run."""
    diffs = [f for f in diff_configs(replace(base, method=cfg.method, seed=cfg.seed), cfg)
             if f not in IGNORED_FIELDS]
    return "+".join([cfg.method] + [f"{f}={_value(_get(cfg, f))}" for f in diffs])


def plan(experiments: Sequence[Experiment], scale: Scale, seeds: Sequence[int], runs_root: Path,
         datasets: Sequence[str], extra: Sequence[str] = ()) -> list[PlannedRun]:
    """The distinct runs the experiments need on ``datasets``, in experiment order."""
    from psfl.methods import METHODS

    out: dict[str, PlannedRun] = {}
    for exp in experiments:
        for ds in exp.datasets:
            if ds not in datasets:
                continue
            scale_base = base_config(scale, ds, extra)
            for s in exp.series_for(ds):
                for seed in seeds:
                    try:
                        # the method's tuned choice is part of the scale: it does not name the folder
                        base = load_config(None, scale.method_sets(s.method), base=copy.deepcopy(scale_base))
                        cfg = load_config(None, [f'method="{s.method}"', f"seed={seed}", *s.set],
                                          base=copy.deepcopy(base))
                        unused = set(METHODS.get(s.method).unused_fields(cfg))
                        inert = [o.split("=", 1)[0].strip() for o in s.set if o.split("=", 1)[0].strip() in unused]
                        if inert:
                            raise PsflError(f"config field {inert[0]}: method {s.method!r} does not read it")
                    except PsflError as e:
                        raise PsflError(f"{exp.source} series {s.label!r} on {ds}: {e}") from None
                    name = run_name(cfg, base)
                    r = PlannedRun(ds, name, seed, cfg, Path(runs_root) / scale.name / ds / name / f"seed{seed}")
                    out.setdefault(r.key, r).uses.append((exp.name, s.label))
    return list(out.values())


def data_problem(scale: Scale, dataset: str, extra: Sequence[str] = ()) -> str | None:
    """Why ``dataset`` cannot be run here (no npz in the data folder, ...), or None."""
    try:
        cfg = base_config(scale, dataset, extra)
    except PsflError as e:
        return str(e)
    if cfg.data.source == "auto":
        return f"no data folder given for {dataset} (pass --data-dir DIR with {dataset}.npz)"
    return None


def rounds_done(path: Path) -> int:
    from psfl.runners.inprocess import METRICS, read_records

    try:
        return len(read_records(path / METRICS))
    except (ValueError, OSError):
        return 0


def has_checkpoint(path: Path) -> bool:
    """A run folder that can be resumed: its latest checkpoint, or the previous one the
    store falls back to."""
    return any((path / name).is_file() for name in ("checkpoint.pt", "checkpoint.prev.pt"))


def models_problem(run: PlannedRun) -> str | None:
    """Why the models a stored run was made with are not the ones its config builds now
    (None when they are, or nothing is stored yet): the config alone cannot tell, since
    the same config builds other models after the presets took a default k/n
    (:func:`psfl.runners.inprocess.models_mismatch`)."""
    from psfl.runners.inprocess import stored_models_problem

    return stored_models_problem(run.cfg, run.path)


def status(run: PlannedRun) -> str:
    done = rounds_done(run.path)
    if done and models_problem(run):
        return "stale"
    if done >= run.cfg.rounds:
        return "done"
    return f"{done}/{run.cfg.rounds}" if done or has_checkpoint(run.path) else "new"


def check_existing(run: PlannedRun) -> None:
    """A folder that already holds a run must have been made with the planned config
    (fields that do not change a run's numbers aside: threads, paths, and the fields its
    method never reads), and an unfinished one must have a checkpoint to resume from."""
    from psfl.runners.inprocess import CONFIG

    done = rounds_done(run.path)
    if 0 < done < run.cfg.rounds and not has_checkpoint(run.path):
        raise PsflError(f"{run.path} holds {done} of {run.cfg.rounds} rounds but no checkpoint to resume them "
                        "from (copied without it?); move it away to run it again")
    stored_path = run.path / CONFIG
    if not stored_path.is_file():
        return
    why = models_problem(run)
    if why:
        raise PsflError(f"{run.path} holds a run with other models ({why}); move it away or use another --runs folder")
    from psfl.methods import METHODS

    stored = load_config(stored_path)
    unread = tuple(METHODS.get(run.cfg.method).unused_fields(run.cfg)) if run.cfg.method in METHODS else ()
    diffs = [f for f in diff_configs(stored, run.cfg) if f not in IGNORED_FIELDS + ("rounds",) + unread]
    if diffs:
        raise PsflError(f"{run.path} holds a run with another config ({', '.join(diffs)} differ from the "
                        "experiment's); move it away or use another --runs folder")
    if stored.rounds > run.cfg.rounds:
        raise PsflError(f"{run.path} was run for {stored.rounds} rounds, the experiment asks for {run.cfg.rounds}")


def execute(run: PlannedRun, progress: bool = True, device: Any = "cpu",
            log: Callable[[str], None] = print) -> str:
    """Run, resume or skip one planned run; returns what happened."""
    from psfl.runners.inprocess import resume_config, run_federated
    from psfl.utils.lock import RunLockedError

    st = status(run)
    if st == "done":
        return "done"
    check_existing(run)
    resume = has_checkpoint(run.path)
    cfg = run.cfg
    if resume:
        cfg = resume_config(run.path, [f"rounds={run.cfg.rounds}"], strict=False)
    log(f"psfl reproduce: {'resume' if resume else 'start'} {run.key} ({st})")
    command = ["psfl", "reproduce", *sys.argv[2:]] if sys.argv[1:2] == ["reproduce"] else None
    try:
        # strict=False: the scale's settings are shared by every method (as in `psfl compare`);
        # a series' own overrides were checked against its method by plan()
        run_federated(cfg, run.path, resume=resume, progress=progress, device=device, command=command, strict=False)
    except RunLockedError:
        log(f"psfl reproduce: {run.key}: another worker has it; next")
        return "locked"
    return "ran"


@dataclass
class Outcome:
    runs: list[PlannedRun]
    failed: dict[str, str]  # run key -> message
    skipped: dict[str, str]  # dataset -> why
    figures: list[Path]


def reproduce(names: Sequence[str], scale_name: str = "cpu", seeds: Sequence[int] = (0, 1, 2),
              runs_root: Path = Path("results/runs"), out_root: Path = Path("results"),
              datasets: Sequence[str] | None = None, extra: Sequence[str] = (), device: Any = "cpu",
              progress: bool = True, run: bool = True, figures: bool = True, dry_run: bool = False,
              worker_argv: Sequence[str] | None = None, jobs: int = 1, root: Path = EXPERIMENTS_DIR,
              evaluators: Path | None = None, timings: Sequence[Path] = (), full: bool = False,
              log: Callable[[str], None] = print) -> Outcome:
    """Plan, run (resumably) and draw the experiments ``names`` (``["all"]``: every one).

    ``datasets`` restricts the runs to these datasets, which must have data here; the
    figures and claims are still drawn over all the experiments' datasets from their
    finished runs, so that running one dataset never drops the others' panels. Datasets
    without data are skipped and reported. ``jobs`` > 1 starts ``jobs - 1`` more
    workers (``worker_argv``: the command that runs runs only) that share the runs
    through the run folders' locks; figures are drawn after all workers end.
    ``evaluators`` (a folder, e.g. ``results/evaluators``): the trained classifiers kept
    there go into the evaluator cache before any run, and the ones the finished runs used
    are copied there afterwards, so that every machine (and every later seed) trains
    against and scores with the same ones. ``dry_run`` lists the runs and what they cost
    (:mod:`psfl.experiments.budget`: recorded round times, and for the rest those of runs of
    the same cost, also from the run folders under ``timings``) at ``jobs`` workers.
    The scale's cuts (:meth:`Scale.cut`) leave out the runs that only the cut datasets or
    series need, unless ``full``; the figures and claims still draw every finished run."""
    import subprocess

    from psfl.utils.errors import DivergenceError

    names = experiment_names(root) if list(names) == ["all"] else list(dict.fromkeys(names))
    exps = [load_experiment(n, root) for n in names]
    scale = load_scale(scale_name, root)
    every = list(dict.fromkeys(d for e in exps for d in e.datasets))
    if datasets:
        unknown = [d for d in datasets if d not in every]
        if unknown:
            raise PsflError(f"--datasets {unknown[0]}: not a dataset of {', '.join(names)} ({', '.join(every)})")
    asked = [d for d in every if not datasets or d in datasets]
    skipped = {}
    for ds in every:
        why = data_problem(scale, ds, extra)
        if why and ds in asked and datasets:
            raise PsflError(why)
        if why:
            skipped[ds] = why
            if ds in asked:
                log(f"psfl reproduce: {ds} not run: {why}")
    drawn = [d for d in every if d not in skipped]  # figures: every dataset with data
    available = [d for d in asked if d not in skipped]  # runs: the asked-for ones
    every_run = plan(exps, scale, seeds, runs_root, drawn, extra)
    runs = [r for r in every_run if r.dataset in available]
    if scale.cuts and not full:
        kept = {r.key for r in plan([scale.cut(e) for e in exps], scale, seeds, runs_root, drawn, extra)}
        cut = [r for r in runs if r.key not in kept]
        for exp in exps:
            if exp.name in scale.cuts:
                log(f"psfl reproduce: scale {scale.name} cuts {exp.name}: {cut_text(exp, scale.cut(exp))} "
                    f"({scale.source}; --full runs them)")
        if cut:
            log(f"psfl reproduce: {len(cut)} run(s) left out by the cuts")
        runs = [r for r in runs if r.key in kept]
    if dry_run:
        from psfl.experiments.budget import budget_lines, project

        for r in runs:
            log(f"{status(r):>8}  {r.key}  -> {r.path}")
        for line in budget_lines(project(runs, timings), jobs, {r.key: r.dataset for r in runs}):
            log(line)
        return Outcome(runs, {}, {d: w for d, w in skipped.items() if d in asked}, [])
    failed: dict[str, str] = {}
    if run:
        for r in runs:
            check_existing(r)  # refuse a folder made with another config before any work
        if evaluators is not None:
            _share_evaluators(evaluators, runs, scale, available, extra, log)
        procs = [subprocess.Popen(list(worker_argv)) for _ in range(jobs - 1)] if worker_argv and jobs > 1 else []
        try:
            for r in runs:
                try:
                    execute(r, progress=progress, device=device, log=log)
                except DivergenceError as e:
                    failed[r.key] = f"diverged: {e}"
                    log(f"psfl reproduce: {r.key} stopped: {e}")
        finally:
            for p in procs:
                p.wait()
        if any(p.returncode for p in procs):
            failed["workers"] = f"a worker exited with {[p.returncode for p in procs]}"
        if evaluators is not None:
            _share_evaluators(evaluators, runs, scale, available, extra, log)
    if figures:
        stale = [(r.key, why) for r in every_run if rounds_done(r.path) and (why := models_problem(r))]
        if stale:
            log(f"psfl reproduce: warning: {len(stale)} of the runs drawn were made with other models than their "
                f"config builds now (e.g. {stale[0][0]}: {stale[0][1]}); the figures show those models")
    paths = draw(exps, scale, every_run, skipped, drawn, out_root, extra, device, failed) if figures else []
    if figures:  # the claims judge every experiment, also when only some were named
        claimed = list(dict.fromkeys(d for n in experiment_names(root) for d in load_experiment(n, root).datasets))
        unclaimed = {ds: skipped[ds] if ds in skipped else data_problem(scale, ds, extra) for ds in claimed}
        unclaimed = {ds: why for ds, why in unclaimed.items() if why}
        paths.append(write_claims(scale, seeds, runs_root, [d for d in claimed if d not in unclaimed], unclaimed,
                                  out_root, extra, root))
    return Outcome(runs, failed, {d: w for d, w in skipped.items() if d in asked}, paths)


def _share_evaluators(folder: Path, runs: Sequence[PlannedRun], scale: Scale, datasets: Sequence[str],
                      extra: Sequence[str], log: Callable[[str], None]) -> None:
    """Kept evaluators of ``folder`` -> each dataset's evaluator cache; the evaluators the
    runs that have a ``provenance.json`` used -> ``folder`` (see :func:`reproduce`)."""
    from psfl.evaluate.evaluator import share_evaluators

    share_evaluators(folder, (base_config(scale, ds, extra).evaluator.cache_dir or None for ds in datasets),
                     (r.path / "provenance.json" for r in runs), log, who="psfl reproduce")


def figure_input(exp: Experiment, scale: Scale, runs: Sequence[PlannedRun], skipped: dict[str, str],
                 available: Sequence[str], extra: Sequence[str] = (), device: Any = "cpu",
                 failed: dict[str, str] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The finished runs of ``exp`` (a :class:`psfl.experiments.figures.FigureInput`) and a record of
    every run it uses (folder, rounds done, compute time, code version, data fingerprints)."""
    from psfl.experiments.figures import FigureInput
    from psfl.runners.inprocess import PROVENANCE, read_records

    records: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    folders: dict[tuple[str, str], dict[int, Path]] = {}
    used: list[dict[str, Any]] = []
    rounds, bases = {}, {}
    dsets = [d for d in exp.datasets if d in available]
    for ds in dsets:
        bases[ds] = base = base_config(scale, ds, extra)
        rounds[ds] = base.rounds
        for s in exp.series_for(ds):
            for r in runs:
                if r.dataset != ds or (exp.name, s.label) not in r.uses:
                    continue
                folders.setdefault((ds, s.label), {})[r.seed] = r.path
                try:
                    recs = read_records(r.path / "metrics.jsonl")
                except ValueError:  # a torn last line of a run being written: count it as unfinished
                    recs = []
                prov = json.loads((r.path / PROVENANCE).read_text()) if (r.path / PROVENANCE).is_file() else {}
                used.append({"run": str(r.path), "dataset": ds, "series": s.label, "seed": r.seed,
                             "rounds_done": len(recs), "rounds": r.cfg.rounds,
                             "compute_s": round(sum(x.get("time_s", 0.0) for x in recs), 1),
                             "git_commit": prov.get("runtime", {}).get("git_commit"),
                             "data_fingerprint": prov.get("data", {}).get("fingerprint"),
                             "partition_fingerprint": prov.get("partition", {}).get("fingerprint"),
                             "failed": (failed or {}).get(r.key)})
                if len(recs) >= r.cfg.rounds:
                    records.setdefault((ds, s.label), {})[r.seed] = recs[:r.cfg.rounds]
    inp = FigureInput(exp, dsets, {d: w for d, w in skipped.items() if d in exp.datasets}, records, folders,
                      rounds, bases, device)
    return inp, used


def draw(exps: Sequence[Experiment], scale: Scale, runs: Sequence[PlannedRun], skipped: dict[str, str],
         available: Sequence[str], out_root: Path, extra: Sequence[str] = (), device: Any = "cpu",
         failed: dict[str, str] | None = None) -> list[Path]:
    """Every experiment's figure from the finished runs, with ``command.txt`` and
    ``provenance.json`` (code version, scale and experiment files, the runs used)."""
    from psfl.experiments.figures import FIGURES
    from psfl.runners.inprocess import git_commit

    paths: list[Path] = []
    code = git_commit()
    for exp in exps:
        out = Path(out_root) / exp.name
        out.mkdir(parents=True, exist_ok=True)
        inp, used = figure_input(exp, scale, runs, skipped, available, extra, device, failed)
        paths += FIGURES.get(exp.plot).draw(inp, out)
        cmd = ["psfl", "reproduce", *sys.argv[2:]] if sys.argv[1:2] == ["reproduce"] else ["psfl", "reproduce",
                                                                                           exp.name]
        (out / "command.txt").write_text(" ".join(cmd) + "\n")
        prov_out = {"experiment": exp.name, "title": exp.title, "experiment_file": Path(exp.source).read_text(),
                    "scale": scale.name, "scale_file": Path(scale.source).read_text(), "git_commit": code,
                    "runs_finished": sum(u["rounds_done"] >= u["rounds"] for u in used), "runs_planned": len(used),
                    "compute_hours": round(sum(u["compute_s"] for u in used) / 3600, 2),
                    "not_run": inp.skipped, "runs": used}
        (out / "provenance.json").write_text(json.dumps(prov_out, indent=2) + "\n")
    return paths


def convergence_lines(runs: Sequence[PlannedRun]) -> list[str]:
    """A markdown table: per dataset and run (over its finished seeds), the budget and the
    global accuracy's slope per round over the last rounds, flat or not
    (:func:`psfl.experiments.figures.tail_slope`)."""
    from psfl.experiments.figures import FLAT_SLOPE, SLOPE_ROUNDS, flat_note, pm, tail_slope
    from psfl.runners.inprocess import read_records

    groups: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.name), []).append(r)
    out = [f"Global accuracy (scorer): mean ± sd over seeds of each run's least-squares slope over its last "
           f"{SLOPE_ROUNDS} rounds; flat when the mean is within ±{FLAT_SLOPE} per round.", "",
           "| dataset | run | rounds x local steps | seeds finished | slope per round | flat |", "|---|---|---|---|---|---|"]
    for (ds, name), rs in groups.items():
        acc = []
        for r in rs:
            try:
                recs = read_records(r.path / "metrics.jsonl", quiet=True)
            except (ValueError, OSError):
                recs = []
            if len(recs) >= r.cfg.rounds:
                acc.append([x["global"]["accuracy"] for x in recs[:r.cfg.rounds]])
        slopes = tail_slope(np.array(acc, dtype=float).reshape(len(acc), rs[0].cfg.rounds if acc else 0))
        budget = (f"{rs[0].cfg.rounds} x {rs[0].cfg.train.local_steps}" if not rs[0].cfg.train.local_epochs
                  else f"{rs[0].cfg.rounds} x {rs[0].cfg.train.local_epochs} epochs")
        out.append(f"| {ds} | {name} | {budget} | {len(acc)}/{len(rs)} | {pm(slopes, '{:+.4f}')} | "
                   f"{flat_note(slopes)} |")
    return out


def write_claims(scale: Scale, seeds: Sequence[int], runs_root: Path, available: Sequence[str],
                 skipped: dict[str, str], out_root: Path, extra: Sequence[str] = (),
                 root: Path = EXPERIMENTS_DIR) -> Path:
    """``OUT/claims.md``: every figure's state (runs finished, compute time of its runs)
    and the paper's claims judged on all finished runs (:mod:`psfl.experiments.claims`)."""
    from psfl.experiments.claims import claims_markdown

    exps = [load_experiment(n, root) for n in experiment_names(root)]
    runs = plan(exps, scale, seeds, runs_root, available, extra)
    inputs, lines = {}, ["| figure | runs finished | compute of its runs (h, 1 thread each) | not run |",
                         "|---|---|---|---|"]
    total: dict[str, float] = {}
    for exp in exps:
        inp, used = figure_input(exp, scale, runs, skipped, available, extra)
        inputs[exp.name] = inp
        for u in used:
            total[u["run"]] = u["compute_s"]
        done = sum(u["rounds_done"] >= u["rounds"] for u in used)
        lines.append(f"| {exp.name} | {done}/{len(used)} | {sum(u['compute_s'] for u in used) / 3600:.2f} | "
                     f"{', '.join(inp.skipped) or '-'} |")
    lines.append(f"| all (each run once) | | {sum(total.values()) / 3600:.2f} | |")
    lines += ["", "## Convergence", "", *convergence_lines(runs)]
    path = Path(out_root) / "claims.md"
    tuned = ""
    if scale.tuned_source:
        methods = sorted({r.cfg.method for r in runs})
        tuned = (f"Each method's settings were tuned on validation data ({scale.tuned_source}): "
                 + "; ".join(f"{m}: {' '.join(scale.method_sets(m)) or 'defaults'}" for m in methods) + ".\n\n")
    if scale.cuts:
        by_exp = {e.name: e for e in exps}
        tuned += ("Budget cut at this scale (`psfl reproduce --full` runs the rest): "
                  + "; ".join(f"{n}: {cut_text(by_exp[n], scale.cut(by_exp[n]))}"
                              for n in scale.cuts if n in by_exp) + ".\n\n")
    path.write_text(f"# psfl reproduce: state and claims (scale {scale.name}, seeds "
                    f"{','.join(map(str, seeds))})\n\n" + tuned + "\n".join(lines) + "\n\n## Claims\n\n"
                    + claims_markdown(inputs) + "\n")
    return path
