"""Figures of `psfl reproduce` (Figs. 4-13 and reconstruction grids) from finished runs.

Each figure kind is a :data:`FIGURES` entry: ``check(experiment)`` validates what the
experiment file asks of it, ``draw(inp, out)`` writes the PNG(s) and the data behind
them (``curves.csv``: mean, sd, min, max and n over seeds per round; ``summary.csv`` /
``summary.md``: the last-5-round mean of each run, then mean ± sd over seeds). Curves are
the mean over the finished seeds with a ±1 sd band. A per-round value comes from a
:data:`SERIES_METRICS` function of one metrics.jsonl record.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from psfl.utils.errors import PsflError
from psfl.utils.registry import Registry

LAST = 5  # rounds averaged for the summary of one run (one final round does not decide)
SLOPE_ROUNDS = 10  # a curve is flat when its mean slope over these last rounds ...
FLAT_SLOPE = 0.005  # ... is below this (global accuracy per round), in absolute value
PANEL = "abcdefgh"


def _client_mean(key: str, fallback: str | None = None) -> Callable[[dict[str, Any]], float]:
    def f(rec: dict[str, Any]) -> float:
        vals = [c.get(key, c.get(fallback) if fallback else None) for c in rec["clients"]]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")
    return f


@dataclass(frozen=True)
class SeriesMetric:
    fn: Callable[[dict[str, Any]], float]
    label: str  # axis label


SERIES_METRICS: Registry[SeriesMetric] = Registry("metric")
for _name, _fn, _label in (
    ("global_accuracy", lambda r: r["global"]["accuracy"], "global accuracy (scorer, test images)"),
    ("global_loss", lambda r: r["global"]["loss"], "global test loss (CE + weighted MSE)"),
    ("global_psnr", lambda r: r["global"]["psnr"], "global PSNR (dB)"),
    ("global_loss_clf_accuracy", lambda r: r["global"].get("loss_clf_accuracy", float("nan")),
     "global accuracy (loss classifier, test images)"),
    ("local_accuracy", lambda r: r["mean_local_acc"], "local accuracy (mean over clients)"),
    ("local_loss", _client_mean("mentor_task", "local_task"), "local task loss (mean over clients)"),
    ("mentor_accuracy", _client_mean("mentor_acc"), "accuracy (mean over clients)"),
    ("student_accuracy", _client_mean("student_acc"), "accuracy (mean over clients)"),
    ("mentor_loss", _client_mean("mentor_task"), "task loss (mean over clients)"),
    ("student_loss", _client_mean("student_task"), "task loss (mean over clients)"),
    ("energy", lambda r: r["energy_j"], "uplink energy per round (J)"),
):
    SERIES_METRICS.register(_name)(SeriesMetric(_fn, _label))


@dataclass
class FigureInput:
    """What a figure draws from: the finished runs of each (dataset, series label)."""
    exp: Any  # psfl.experiments.Experiment
    datasets: list[str]  # datasets with data here (panels)
    skipped: dict[str, str]  # dataset -> why it was not run
    records: dict[tuple[str, str], dict[int, list[dict[str, Any]]]]  # finished runs only
    paths: dict[tuple[str, str], dict[int, Path]]  # run folders, finished or not
    rounds: dict[str, int]  # per dataset
    base: dict[str, Any] = field(default_factory=dict)  # dataset -> scale RunConfig
    device: Any = "cpu"


@dataclass(frozen=True)
class Figure:
    draw: Callable[[FigureInput, Path], list[Path]]
    check: Callable[[Any], None] = lambda exp: None


FIGURES: Registry[Figure] = Registry("figure kind")


# ------------------------------------------------------------------ data helpers
def _run_evaluators(path: Path) -> tuple[str, str]:
    """The weights digests of the loss classifier and the scorer a run used (its provenance)."""
    try:
        ev = json.loads((path / "provenance.json").read_text())["evaluators"]
        return ev["loss_classifier"]["weights_blake2b"], ev["scorer"]["weights_blake2b"]
    except (OSError, KeyError, ValueError) as e:
        return (f"unknown ({type(e).__name__})",) * 2


def finished_seeds(inp: FigureInput, ds: str, label: str) -> list[int]:
    """The seeds of a series whose runs reached the figure's round count."""
    return sorted(k for k, r in inp.records.get((ds, label), {}).items() if len(r) >= inp.rounds[ds])


def evaluators_of(inp: FigureInput, ds: str, label: str) -> set[tuple[str, str]]:
    """The (loss classifier, scorer) digests of a series' finished runs: one element when
    every seed trained against and was scored by the same classifiers."""
    paths = inp.paths.get((ds, label), {})
    return {_run_evaluators(paths[k]) for k in finished_seeds(inp, ds, label) if k in paths}


def panel_notes(inp: FigureInput) -> list[str]:
    """Markdown notes under a figure's table: datasets not run, and panels whose series were
    trained or scored with different evaluator weights (their numbers are not comparable)."""
    notes = [f"\n**{ds}: not run.** {why}" for ds, why in inp.skipped.items()]
    for ds in inp.datasets:
        used = {s.label: evaluators_of(inp, ds, s.label) for s in inp.exp.series_for(ds)}
        if len(set().union(*used.values())) > 1:
            notes.append(f"\n**{ds}: runs with different evaluators** (loss classifier, scorer weights digests): "
                         + "; ".join(f"{k}: {', '.join('/'.join(d[:8] for d in e) for e in sorted(v))}"
                                     for k, v in used.items() if v)
                         + ". Their accuracies are not comparable; re-run them with the same kept evaluators.")
    return notes


def curves(runs: dict[int, list[dict[str, Any]]], metric: str, rounds: int) -> np.ndarray:
    """(seeds, rounds) values of ``metric`` for the finished runs."""
    fn = SERIES_METRICS.get(metric).fn
    rows = [[fn(r) for r in recs[:rounds]] for _, recs in sorted(runs.items()) if len(recs) >= rounds]
    return np.array(rows, dtype=float).reshape(len(rows), rounds)


def last_mean(values: np.ndarray, last: int = LAST) -> np.ndarray:
    """Per seed: mean of the last ``last`` rounds."""
    return values[:, -last:].mean(1) if values.size else np.zeros(0)


def tail_slope(values: np.ndarray, rounds: int = SLOPE_ROUNDS) -> np.ndarray:
    """Per seed: the least-squares slope (per round) of the last ``rounds`` rounds (all of
    them when a run has fewer)."""
    if not values.size:
        return np.zeros(0)
    tail = values[:, -rounds:]
    t = np.arange(tail.shape[1], dtype=float)
    if len(t) < 2:
        return np.full(len(tail), np.nan)
    t -= t.mean()
    return (tail - tail.mean(1, keepdims=True)) @ t / (t @ t)


def flat_note(slopes: np.ndarray) -> str:
    """``"flat"`` when the mean slope is within :data:`FLAT_SLOPE`, else ``"rising"`` or
    ``"falling"`` ("-" without runs)."""
    if not slopes.size or np.isnan(slopes).all():
        return "-"
    m = float(np.nanmean(slopes))
    return "flat" if abs(m) < FLAT_SLOPE else ("rising" if m > 0 else "falling")


def pm(v: np.ndarray, fmt: str = "{:.3f}") -> str:
    if v.size == 0 or np.isnan(v).all():
        return "-"
    return fmt.format(v.mean()) + (f" ± {fmt.format(v.std(ddof=1))}" if v.size > 1 else "")


def write_curves_csv(inp: FigureInput, metrics: Sequence[str], out: Path) -> Path:
    path = out / "curves.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "series", "metric", "round", "n", "mean", "sd", "min", "max"])
        for ds in inp.datasets:
            for s in inp.exp.series_for(ds):
                for m in metrics:
                    a = curves(inp.records.get((ds, s.label), {}), m, inp.rounds[ds])
                    for t in range(a.shape[1] if a.size else 0):
                        col = a[:, t]
                        w.writerow([ds, s.label, m, t + 1, len(col), f"{col.mean():.6g}",
                                    f"{col.std(ddof=1):.6g}" if len(col) > 1 else "", f"{col.min():.6g}",
                                    f"{col.max():.6g}"])
    return path


def series_bandwidth(inp: FigureInput, ds: str, label: str) -> str:
    """k/n of the models of a series (its first finished run's provenance; "" for runs
    recorded before provenance named them)."""
    from psfl.experiments.compare import bandwidth_of

    paths = inp.paths.get((ds, label), {})
    return next((kn for k in finished_seeds(inp, ds, label) if k in paths and (kn := bandwidth_of(paths[k]))), "")


def write_summary(inp: FigureInput, metrics: Sequence[str], out: Path, fmt: dict[str, str] | None = None
                  ) -> list[Path]:
    """Per dataset and series: finished seeds, and per metric the mean ± sd over seeds of
    each run's last-5-round mean; datasets not run are listed with the reason."""
    fmt = fmt or {}
    rows, lines = [], []
    head = ["dataset", "series", "seeds", "k/n"] + [f"{m} (last {LAST})" for m in metrics] + \
        [f"global accuracy slope per round (last {SLOPE_ROUNDS})", f"flat (< {FLAT_SLOPE})"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ds in inp.datasets:
        for s in inp.exp.series_for(ds):
            runs = inp.records.get((ds, s.label), {})
            finished = finished_seeds(inp, ds, s.label)
            planned = sorted(inp.paths.get((ds, s.label), {}))
            kn = series_bandwidth(inp, ds, s.label)
            row: dict[str, Any] = {"dataset": ds, "series": s.label, "seeds": " ".join(map(str, finished)),
                                   "planned_seeds": " ".join(map(str, planned)), "bandwidth_ratio": kn}
            cells = [ds, s.label, f"{len(finished)}/{len(planned)}", kn or "-"]
            for m in metrics:
                v = last_mean(curves(runs, m, inp.rounds[ds]))
                row[f"{m}_mean"] = float(v.mean()) if v.size else float("nan")
                row[f"{m}_sd"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
                cells.append(pm(v, fmt.get(m, "{:.3f}")))
            slopes = tail_slope(curves(runs, "global_accuracy", inp.rounds[ds]))
            row["global_accuracy_slope_mean"] = float(slopes.mean()) if slopes.size else float("nan")
            row["global_accuracy_slope_sd"] = float(slopes.std(ddof=1)) if slopes.size > 1 else float("nan")
            row["flat"] = flat_note(slopes)
            cells += [pm(slopes, "{:+.4f}"), row["flat"]]
            rows.append(row)
            lines.append("| " + " | ".join(cells) + " |")
    return write_tables(inp, lines, rows, out)


def write_tables(inp: FigureInput, lines: list[str], rows: list[dict[str, Any]], out: Path,
                 fields: Sequence[str] | None = None) -> list[Path]:
    """``summary.md`` (the figure's title, the markdown ``lines``, the panel notes) and
    ``summary.csv`` (``rows``; columns ``fields`` or the first row's keys)."""
    md, cs = out / "summary.md", out / "summary.csv"
    md.write_text(f"# {inp.exp.title}\n\n" + "\n".join([*lines, *panel_notes(inp)]) + "\n")
    with cs.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or (rows[0] if rows else ["dataset"])))
        w.writeheader()
        w.writerows(rows)
    return [md, cs]


# ------------------------------------------------------------------ drawing helpers
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: int, cols: int, w: float = 4.2, h: float = 3.3):
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    return plt, fig, axes


def _band(ax, a: np.ndarray, label: str, style: str = "-") -> None:
    if not a.size:
        return
    from matplotlib.ticker import MaxNLocator

    x = np.arange(1, a.shape[1] + 1)
    mean = a.mean(0)
    line, = ax.plot(x, mean, style, label=f"{label} (n={a.shape[0]})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if a.shape[0] > 1:
        sd = a.std(0, ddof=1)
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.18, linewidth=0)


def _legend(ax, **kw: Any) -> None:
    """The legend of a panel; a panel with nothing drawn says so instead."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes, color="gray")


def _panel_title(ax, i: int, ds: str) -> None:
    ax.set_title(f"({PANEL[i]}) {ds}", fontsize=10)


def _save(plt, fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _not_run_note(fig, inp: FigureInput) -> None:
    if inp.skipped:
        fig.text(0.01, 0.005, "not run: " + "; ".join(f"{d} ({w.split(';')[0]})" for d, w in inp.skipped.items()),
                 fontsize=7, color="gray")


# ------------------------------------------------------------------ figure kinds
def _need(*attrs: str) -> Callable[[Any], None]:
    def check(exp: Any) -> None:
        for a in attrs:
            if not getattr(exp, a):
                raise PsflError(f"{exp.source}: plot {exp.plot!r} needs {a}")
    return check


def draw_curves(inp: FigureInput, out: Path) -> list[Path]:
    """Rows: metrics; columns: datasets; one mean ± sd curve per series."""
    metrics = inp.exp.metrics
    plt, fig, axes = _grid(len(metrics), max(1, len(inp.datasets)))
    for j, ds in enumerate(inp.datasets):
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            for s in inp.exp.series_for(ds):
                _band(ax, curves(inp.records.get((ds, s.label), {}), m, inp.rounds[ds]), s.label)
            ax.set(xlabel="communication round", ylabel=SERIES_METRICS.get(m).label)
            ax.grid(alpha=0.3)
            _legend(ax, fontsize=7)
            if i == 0:
                _panel_title(ax, j, ds)
    _not_run_note(fig, inp)
    png = _save(plt, fig, out / f"{inp.exp.name}.png", inp.exp.title)
    return [png, write_curves_csv(inp, metrics, out), *write_summary(inp, metrics, out)]


def draw_mentor_student(inp: FigureInput, out: Path) -> list[Path]:
    """One panel per dataset: each metric (mentor, student) of each series, mean ± sd."""
    metrics = inp.exp.metrics
    plt, fig, axes = _grid(1, max(1, len(inp.datasets)))
    for j, ds in enumerate(inp.datasets):
        ax = axes[0][j]
        for s in inp.exp.series_for(ds):
            for m, style in zip(metrics, ("-", "--", ":", "-.")):
                who = m.split("_")[0]
                _band(ax, curves(inp.records.get((ds, s.label), {}), m, inp.rounds[ds]),
                      f"{who}" if len(inp.exp.series) == 1 else f"{s.label}: {who}", style)
        ax.set(xlabel="communication round", ylabel=SERIES_METRICS.get(metrics[0]).label)
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
        _panel_title(ax, j, ds)
    _not_run_note(fig, inp)
    png = _save(plt, fig, out / f"{inp.exp.name}.png", inp.exp.title)
    return [png, write_curves_csv(inp, metrics, out), *write_summary(inp, metrics, out)]


def final_local_accuracy(runs: dict[int, list[dict[str, Any]]], rounds: int) -> np.ndarray:
    """(seeds, clients): each client's local accuracy at its last round of each finished run."""
    rows = []
    for _, recs in sorted(runs.items()):
        if len(recs) < rounds:
            continue
        acc: dict[int, float] = {}
        for rec in recs[:rounds]:
            for c in rec["clients"]:
                acc[c["cid"]] = c["local_acc"]
        rows.append([acc[k] for k in sorted(acc)])
    return np.array(rows, dtype=float)


def draw_contenders(inp: FigureInput, out: Path) -> list[Path]:
    """Per dataset (row): the metrics' curves, then each client's final local accuracy
    (bars: mean over seeds, error bars: sd)."""
    metrics = inp.exp.metrics
    plt, fig, axes = _grid(max(1, len(inp.datasets)), len(metrics) + 1, w=4.6)
    per_client = []
    for i, ds in enumerate(inp.datasets):
        series = inp.exp.series_for(ds)
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            for s in series:
                _band(ax, curves(inp.records.get((ds, s.label), {}), m, inp.rounds[ds]), s.label)
            ax.set(xlabel="communication round", ylabel=SERIES_METRICS.get(m).label)
            ax.set_title(f"({PANEL[j]}) {ds}", fontsize=10)
            ax.grid(alpha=0.3)
            _legend(ax, fontsize=7)
        ax = axes[i][len(metrics)]
        width = 0.8 / max(1, len(series))
        for k, s in enumerate(series):
            a = final_local_accuracy(inp.records.get((ds, s.label), {}), inp.rounds[ds])
            if not a.size:
                continue
            x = np.arange(a.shape[1]) + k * width - 0.4 + width / 2
            ax.bar(x, a.mean(0), width, yerr=a.std(0, ddof=1) if a.shape[0] > 1 else None, capsize=1.5,
                   label=s.label, error_kw={"elinewidth": 0.6})
            per_client += [{"dataset": ds, "series": s.label, "client": c, "n": a.shape[0],
                            "mean": float(a[:, c].mean()), "sd": float(a[:, c].std(ddof=1)) if a.shape[0] > 1
                            else float("nan")} for c in range(a.shape[1])]
        ax.set(xlabel="client", ylabel="final local accuracy", ylim=(0, 1))
        if ds in inp.base:
            ax.set_xticks(range(inp.base[ds].data.num_clients))
        ax.set_title(f"({PANEL[len(metrics)]}) {ds}", fontsize=10)
        _legend(ax, fontsize=6, ncol=2)
    _not_run_note(fig, inp)
    png = _save(plt, fig, out / f"{inp.exp.name}.png", inp.exp.title)
    path = out / "local_accuracy.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dataset", "series", "client", "n", "mean", "sd"])
        w.writeheader()
        w.writerows(per_client)
    return [png, path, write_curves_csv(inp, metrics, out),
            *write_summary(inp, [*metrics, "local_accuracy"], out)]


def draw_energy(inp: FigureInput, out: Path) -> list[Path]:
    """Per dataset: boxplot over rounds (all finished seeds pooled) of the uplink energy."""
    plt, fig, axes = _grid(1, max(1, len(inp.datasets)), w=5.5)
    for j, ds in enumerate(inp.datasets):
        ax = axes[0][j]
        series = inp.exp.series_for(ds)
        data = [curves(inp.records.get((ds, s.label), {}), "energy", inp.rounds[ds]).ravel() for s in series]
        keep = [(s.label, d) for s, d in zip(series, data) if d.size]
        if keep:
            ax.boxplot([d for _, d in keep], tick_labels=[lab for lab, _ in keep])
        ax.set(ylabel=SERIES_METRICS.get("energy").label, yscale="log")
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3, axis="y")
        _panel_title(ax, j, ds)
    _not_run_note(fig, inp)
    png = _save(plt, fig, out / f"{inp.exp.name}.png", inp.exp.title)
    rows, lines = [], ["| dataset | series | rounds x seeds | median J | IQR J | min J | max J | mean J |",
                       "|---|---|---|---|---|---|---|---|"]
    for ds in inp.datasets:
        for s in inp.exp.series_for(ds):
            d = curves(inp.records.get((ds, s.label), {}), "energy", inp.rounds[ds]).ravel()
            if not d.size:
                continue
            q1, med, q3 = np.percentile(d, [25, 50, 75])
            rows.append({"dataset": ds, "series": s.label, "n": d.size, "median": med, "iqr": q3 - q1,
                         "min": d.min(), "max": d.max(), "mean": d.mean()})
            lines.append(f"| {ds} | {s.label} | {d.size} | {med:.4g} | {q3 - q1:.4g} | {d.min():.4g} | "
                         f"{d.max():.4g} | {d.mean():.4g} |")
    tables = write_tables(inp, lines, rows, out, ["dataset", "series", "n", "median", "iqr", "min", "max", "mean"])
    return [png, *tables, write_curves_csv(inp, ["energy"], out)]


def draw_partition(inp: FigureInput, out: Path) -> list[Path]:
    """Per dataset and r: stacked class counts per client (the partition of seed 0 of the
    scale's config: client count, volumes, local test share)."""
    from psfl.data import label_skew, load_dataset, make_partition

    plt, fig, axes = _grid(max(1, len(inp.datasets)), len(inp.exp.alphas), w=4.4)
    rows = []
    for i, ds in enumerate(inp.datasets):
        d = inp.base[ds].data
        data = load_dataset(ds, source=d.source, data_dir=d.data_dir)
        for j, alpha in enumerate(inp.exp.alphas):
            part = make_partition(data.y_train, num_classes=data.num_classes, num_clients=d.num_clients,
                                  scheme="dirichlet", alpha=alpha, sizes=d.sizes, min_size=d.min_client_size,
                                  local_test_fraction=d.local_test_fraction, seed=inp.base[ds].seed)
            counts = np.asarray(part.class_counts)  # (clients, classes)
            ax, bottom = axes[i][j], np.zeros(counts.shape[0])
            cmap = _plt().get_cmap("tab10" if counts.shape[1] <= 10 else "tab20")
            for c in range(counts.shape[1]):
                ax.bar(range(counts.shape[0]), counts[:, c], bottom=bottom, color=cmap(c % cmap.N),
                       label=data.info.class_names[c] if counts.shape[1] <= 10 else None)
                bottom += counts[:, c]
            ax.set(xlabel="client", ylabel="samples", xticks=range(counts.shape[0]))
            ax.set_title(f"({PANEL[j]}) {ds}, r = {alpha:g} (skew {label_skew(counts):.2f})", fontsize=10)
            rows += [{"dataset": ds, "r": alpha, "client": k, **{f"class_{c}": int(counts[k, c])
                                                                   for c in range(counts.shape[1])}}
                     for k in range(counts.shape[0])]
        axes[i][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    _not_run_note(fig, inp)
    png = _save(plt, fig, out / f"{inp.exp.name}.png", inp.exp.title)
    path = out / "class_counts.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["dataset"])
        w.writeheader()
        w.writerows(rows)
    return [png, path]


def draw_reconstructions(inp: FigureInput, out: Path) -> list[Path]:
    """Per dataset: the first ``images`` test images sent through the global model of
    each series' seed-0 run (the lowest finished seed) at each SNR; grid columns:
    original, then one per (series, SNR). PSNR / SSIM / scorer accuracy per cell in CSV,
    beside the trivial baselines recorded in the run's provenance."""
    import torch

    from psfl import data as D
    from psfl.evaluate.evaluator import load_evaluator
    from psfl.evaluate.transmit import transmit_images
    from psfl.runners.inprocess import ensure_global_model
    from psfl.models import load_model_checkpoint

    exp, paths, rows, notes = inp.exp, [], [], []
    for ds in inp.datasets:
        cfg = inp.base[ds]
        cols, labels = [], []
        original = None
        for s in exp.series_for(ds):
            runs = inp.records.get((ds, s.label), {})
            if not runs:
                continue
            seed = min(runs)
            run_dir = inp.paths[(ds, s.label)][seed]
            model_path = ensure_global_model(run_dir, inp.device)
            if not model_path.is_file():  # e.g. a clone: model files are not committed
                notes.append(f"{ds} {s.label}: no global model in {run_dir} (no checkpoint.pt either)")
                continue
            model = load_model_checkpoint(model_path, device=inp.device)
            meta = model.checkpoint_config
            data = D.load_dataset(ds, source=cfg.data.source, data_dir=cfg.data.data_dir)
            res = D.resolve_for(data, meta["input_preset"])
            ev = cfg.evaluator
            scorer = load_evaluator(ds, cfg.data.source, cfg.data.data_dir, res.name, ev.score_arch,
                                    ev.score_epochs, seed=ev.score_seed, checkpoint=ev.score_checkpoint or None,
                                    cache_dir=ev.cache_dir or None, progress=False, device=inp.device)
            idx = list(range(exp.images))
            x = D.to_model_input(data.x_test[idx], res)
            y = [int(data.y_test[i]) for i in idx]
            prov = json.loads((run_dir / "provenance.json").read_text())
            base = prov.get("baselines", {})
            for snr in exp.snrs:
                r = transmit_images(model, scorer, x, snr, generator=torch.Generator().manual_seed(seed), input=res,
                                    labels=y)
                original = r.original if original is None else original
                cols.append(r.reconstruction)
                labels.append(f"{s.label} {snr:g} dB")
                rows.append({"dataset": ds, "series": s.label, "run": str(run_dir), "seed": seed, "snr_db": snr,
                             "images": len(idx), "psnr": float(np.mean(r.psnr)), "ssim": float(np.mean(r.ssim)),
                             "scorer_accuracy": float(np.mean([p == t for p, t in zip(r.predicted, y)])),
                             **{f"baseline_{k}_psnr": v["psnr"] for k, v in base.items()}})
        if original is None:
            continue
        paths.append(_recon_grid(original, cols, labels, out / f"{exp.name}-{ds}.png", f"{exp.title}: {ds}"))
    path = out / "reconstructions.csv"
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith("baseline"), list(rows[0]).index(k)
                                                                if k in rows[0] else 99)) if rows else ["dataset"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    lines = ["| dataset | series | SNR dB | PSNR dB | SSIM | scorer acc | baseline PSNR (dataset mean / class mean) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['series']} | {r['snr_db']:g} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
              f"{r['scorer_accuracy']:.2f} | {r.get('baseline_dataset_mean_psnr', math.nan):.2f} / "
              f"{r.get('baseline_class_mean_psnr', math.nan):.2f} |" for r in rows]
    lines += panel_notes(inp)
    lines += [f"\n**Not drawn:** {n}" for n in notes]
    (out / "summary.md").write_text(f"# {exp.title}\n\n" + "\n".join(lines) + "\n")
    return [*paths, path, out / "summary.md"]


def _recon_grid(original, cols, labels: Sequence[str], path: Path, title: str) -> Path:
    plt = _plt()
    n, k = original.shape[0], len(cols) + 1
    fig, axes = plt.subplots(n, k, figsize=(1.25 * k, 1.25 * n + 0.6), squeeze=False)
    for i in range(n):
        for j, img in enumerate([original] + list(cols)):
            a = img[i].permute(1, 2, 0).clamp(0, 1).numpy()
            ax = axes[i][j]
            ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray" if a.shape[-1] == 1 else None,
                      vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(("original", *labels)[j], fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def clean_accuracies(inp: FigureInput, ds: str) -> dict[str, float]:
    """The loss classifier's and the scorer's accuracy on clean test images, from the
    provenance of the panel's finished runs (one pair: the runs share their evaluators)."""
    for s in inp.exp.series_for(ds):
        paths = inp.paths.get((ds, s.label), {})
        for k in finished_seeds(inp, ds, s.label):
            try:
                ev = json.loads((paths[k] / "provenance.json").read_text())["evaluators"]
                return {"scorer": float(ev["scorer"]["test_accuracy"]),
                        "loss_classifier": float(ev["loss_classifier"]["test_accuracy"])}
            except (OSError, KeyError, ValueError, TypeError):
                continue
    return {}


def draw_fooling(inp: FigureInput, out: Path) -> list[Path]:
    """Per dataset: for every series, the loss classifier's accuracy (dashed) against the
    independent scorer's (solid) on the same reconstructions of the global test images,
    per round; dotted: the scorer on clean test images. A loss classifier far above the
    scorer means the model learnt to fool the classifier inside its loss, not to transmit."""
    plt, fig, axes = _grid(1, max(1, len(inp.datasets)), w=5.2, h=3.8)
    rows, lines = [], ["| dataset | series | seeds | scorer acc (last 5) | loss-clf acc (last 5) | "
                       "fooling gap: loss-clf - scorer | scorer on clean images | scorer / clean |",
                       "|---|---|---|---|---|---|---|---|"]
    for j, ds in enumerate(inp.datasets):
        ax = axes[0][j]
        clean = clean_accuracies(inp, ds)
        for s in inp.exp.series_for(ds):
            runs = inp.records.get((ds, s.label), {})
            a = curves(runs, "global_accuracy", inp.rounds[ds])
            b = curves(runs, "global_loss_clf_accuracy", inp.rounds[ds])
            if not a.size:
                continue
            x = np.arange(1, a.shape[1] + 1)
            line, = ax.plot(x, a.mean(0), "-", label=f"{s.label} (n={a.shape[0]})")
            ax.plot(x, b.mean(0), "--", color=line.get_color())
            va, vb = last_mean(a), last_mean(b)
            gap = vb - va
            ref = clean.get("scorer", float("nan"))
            rows.append({"dataset": ds, "series": s.label, "seeds": a.shape[0], "scorer": float(va.mean()),
                         "loss_classifier": float(vb.mean()), "gap": float(gap.mean()),
                         "gap_sd": float(gap.std(ddof=1)) if gap.size > 1 else float("nan"),
                         "scorer_clean": ref, "loss_classifier_clean": clean.get("loss_classifier", float("nan")),
                         "scorer_over_clean": float(va.mean()) / ref if ref == ref else float("nan")})
            lines.append(f"| {ds} | {s.label} | {a.shape[0]} | {pm(va)} | {pm(vb)} | {pm(gap)} | {ref:.3f} | "
                         f"{float(va.mean()) / ref:.2f} |")
        if "scorer" in clean:
            ax.axhline(clean["scorer"], color="gray", linestyle=":")
        ax.set(xlabel="communication round", ylabel="global accuracy (test images)", ylim=(0, 1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # colours: series; line styles: who scores
            ax.add_artist(ax.legend(fontsize=6, loc="upper left"))
            ax.legend(handles=[ax.plot([], [], "k-")[0], ax.plot([], [], "k--")[0], ax.plot([], [], ":", color="gray")[0]],
                      labels=["scorer", "loss classifier", "scorer, clean images"], fontsize=6, loc="upper right")
        else:
            _legend(ax)
        _panel_title(ax, j, ds)
    _not_run_note(fig, inp)
    png = _save(plt, fig, out / f"{inp.exp.name}.png", inp.exp.title)
    return [png, *write_tables(inp, lines, rows, out),
            write_curves_csv(inp, ["global_accuracy", "global_loss_clf_accuracy"], out)]


FIGURES.register("curves")(Figure(draw_curves, _need("metrics", "series")))
FIGURES.register("mentor_student")(Figure(draw_mentor_student, _need("metrics", "series")))
FIGURES.register("contenders")(Figure(draw_contenders, _need("metrics", "series")))
FIGURES.register("energy")(Figure(draw_energy, _need("series")))
FIGURES.register("partition")(Figure(draw_partition, _need("alphas")))
FIGURES.register("reconstructions")(Figure(draw_reconstructions, _need("series", "snrs")))
FIGURES.register("fooling")(Figure(draw_fooling, _need("series")))
