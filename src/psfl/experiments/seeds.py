"""Several seeds of several runs: mean +- sd tables and curves (issue 9's study and the
headline comparison).

Layout: ``ROOT/<name>/seed<k>/metrics.jsonl`` (what ``scripts/run_queue.py`` writes).
Per run, the headline is the *last-k-round mean* of the global accuracy (the independent
scorer) and PSNR, so one lucky or unlucky final round does not decide; the energy is the
mean per round over the whole run. Per name, these are averaged over the finished seeds
(sample sd, ddof = 1; one seed gives sd = nan). ``trend`` is the last-k mean minus the
mean of the k rounds before it: near 0 when the curve has flattened. Unfinished runs
(fewer rounds than ``rounds``) are listed but never averaged.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from psfl.utils.errors import PsflError

METRICS = ("acc", "local_acc", "psnr", "energy_j", "upload_bits", "trend", "first_acc")


def read_runs(root: Path) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``{name: {seed: records}}`` for every ``ROOT/<name>/seed<k>/metrics.jsonl``."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for m in sorted(Path(root).glob("*/seed*/metrics.jsonl")):
        seed = int(m.parent.name.removeprefix("seed"))
        recs = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
        if recs:
            out.setdefault(m.parent.parent.name, {})[seed] = recs
    return out


def run_summary(records: Sequence[dict[str, Any]], last: int = 5) -> dict[str, float]:
    """One run: last-``last``-round means of global accuracy, mean local accuracy (the
    model each MU uses on its own test images: PSFL's mentor, the paper's "PSFL
    accuracy"; the global model for single-model methods) and PSNR, energy per round,
    upload bits per client per round, the trend of the accuracy, the round-0 accuracy."""
    acc = np.array([r["global"]["accuracy"] for r in records], dtype=float)
    psnr = np.array([r["global"].get("psnr", np.nan) for r in records], dtype=float)
    tail = acc[-last:]
    before = acc[-2 * last:-last]
    return {
        "acc": float(tail.mean()),
        "local_acc": float(np.mean([r["mean_local_acc"] for r in records[-last:]])),
        "psnr": float(psnr[-last:].mean()),
        "energy_j": float(np.mean([r["energy_j"] for r in records])),
        "upload_bits": float(np.mean([c["upload_bits"] for r in records for c in r["clients"]])),
        "trend": float(tail.mean() - before.mean()) if before.size else float("nan"),
        "first_acc": float(acc[0]),
    }


def seed_rows(runs: dict[str, dict[int, list[dict[str, Any]]]], rounds: int, last: int = 5,
              names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per name: mean and sd over its finished seeds of every :data:`METRICS` entry."""
    rows = []
    for name in names or sorted(runs):
        seeds = runs.get(name, {})
        done = {s: r for s, r in sorted(seeds.items()) if len(r) >= rounds}
        row: dict[str, Any] = {"name": name, "seeds": ",".join(map(str, done)),
                               "unfinished": ",".join(f"{s}({len(r)}/{rounds})" for s, r in sorted(seeds.items())
                                                      if len(r) < rounds)}
        sums = [run_summary(r[:rounds], last) for r in done.values()]
        for k in METRICS:
            v = np.array([s[k] for s in sums], dtype=float)
            row[k] = float(v.mean()) if v.size else float("nan")
            row[f"{k}_sd"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        rows.append(row)
    return rows


def _pm(mean: float, sd: float, fmt: str) -> str:
    if math.isnan(mean):
        return "-"
    return fmt.format(mean) + ("" if math.isnan(sd) else " ± " + fmt.format(sd))


def markdown_table(rows: Sequence[dict[str, Any]], last: int = 5) -> str:
    head = ["name", "seeds", f"global acc (last {last}, mean ± sd)", f"local acc (last {last})",
            f"PSNR dB (last {last})", "energy J/round",
            "upload bits/client/round", f"trend (last {last} − previous {last})", "acc round 1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        seeds = r["seeds"] or "none"
        if r["unfinished"]:
            seeds += f" (running: {r['unfinished']})"
        lines.append("| " + " | ".join([
            r["name"], seeds, _pm(r["acc"], r["acc_sd"], "{:.3f}"), _pm(r["local_acc"], r["local_acc_sd"], "{:.3f}"),
            _pm(r["psnr"], r["psnr_sd"], "{:.2f}"),
            _pm(r["energy_j"], r["energy_j_sd"], "{:.4f}"), _pm(r["upload_bits"], float("nan"), "{:,.0f}"),
            _pm(r["trend"], r["trend_sd"], "{:+.3f}"), _pm(r["first_acc"], float("nan"), "{:.3f}")]) + " |")
    return "\n".join(lines) + "\n"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.5, 4.2))


def _save(plt, fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(runs: dict[str, dict[int, list[dict[str, Any]]]], names: Sequence[str], rounds: int, path: Path,
                key: str = "accuracy", ylabel: str = "global accuracy (independent scorer)") -> Path:
    """Mean over finished seeds (line) and min-max band of ``global[key]`` per round."""
    plt, fig, ax = _figure()
    for name in names:
        curves = [[r["global"].get(key, np.nan) for r in recs[:rounds]] for recs in runs.get(name, {}).values()
                  if len(recs) >= rounds]
        if not curves:
            continue
        a = np.array(curves, dtype=float)
        x = np.arange(1, a.shape[1] + 1)
        line, = ax.plot(x, a.mean(0), label=f"{name} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(x, a.min(0), a.max(0), color=line.get_color(), alpha=0.15)
    ax.set(xlabel="communication round", ylabel=ylabel)
    return _save(plt, fig, ax, path)


def plot_energy_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Energy per round (log x) vs last-k accuracy, with sd error bars."""
    plt, fig, ax = _figure()
    for r in rows:
        if math.isnan(r["acc"]):
            continue
        ax.errorbar(r["energy_j"], r["acc"], yerr=None if math.isnan(r["acc_sd"]) else r["acc_sd"], fmt="o",
                    capsize=3, label=r["name"])
    ax.set(xscale="log", xlabel="uplink energy per round (J)", ylabel="global accuracy (last rounds, mean)")
    return _save(plt, fig, ax, path)


def write_seed_report(root: Path, out: Path, rounds: int, last: int = 5, names: Sequence[str] | None = None,
                      prefix: str = "") -> list[Path]:
    """Table (markdown + CSV) and plots for the runs under ``root``; ``names`` picks and
    orders the folders, ``label=folder`` shows a folder under another name."""
    runs = read_runs(root)
    if not runs:
        raise PsflError(f"no runs under {root} (expected {root}/<name>/seed<k>/metrics.jsonl)")
    names = list(names or sorted(runs))
    alias = dict(n.split("=", 1) for n in names if "=" in n)  # "label=folder": a folder shown as label
    runs = {**runs, **{label: runs.get(folder, {}) for label, folder in alias.items()}}
    names = [n.split("=", 1)[0] for n in names]
    rows = seed_rows(runs, rounds, last, names)
    out.mkdir(parents=True, exist_ok=True)
    md, cs = out / f"{prefix}table.md", out / f"{prefix}table.csv"
    md.write_text(markdown_table(rows, last))
    with cs.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return [md, cs, plot_curves(runs, names, rounds, out / f"{prefix}accuracy.png"),
            plot_curves(runs, names, rounds, out / f"{prefix}psnr.png", "psnr", "global PSNR (dB)"),
            plot_energy_accuracy(rows, out / f"{prefix}energy_accuracy.png")]
