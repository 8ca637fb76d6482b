"""The per-method table of RESULTS.md from finished run folders (``metrics.jsonl`` +
``provenance.json``), one row per method folder under ``RUNS``:

    python scripts/run_table.py results/tuned/runs/cpu-tuned/cifar10 --rounds 40

Each statistic is computed per run and then given as mean ± sd over the run's seeds
(sd over seeds, ddof 1): the global (scorer) accuracy's mean over two five-round windows
(rounds 16-20 and the last five), the least-squares slope of the global accuracy over
the last ten rounds (per round; the issue's "flat" rule is a mean below 0.005), the mean
local accuracy, the loss classifier's accuracy and PSNR over the last five rounds, the
median energy per round and the run's recorded compute (sum of ``time_s``, core-hours at
one thread). Only runs with exactly ``--rounds`` records count; the CPUs that recorded
them are listed under the table (timings from different CPUs do not compare).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np


def run_stats(records: list[dict]) -> dict[str, float]:
    acc = np.array([r["global"]["accuracy"] for r in records])
    rounds = np.arange(len(acc))
    last5, last10 = slice(-5, None), slice(-10, None)
    return {
        "early": float(acc[15:20].mean()),
        "last": float(acc[last5].mean()),
        "slope": float(np.polyfit(rounds[last10], acc[last10], 1)[0]),
        "local": float(np.mean([r["mean_local_acc"] for r in records[last5]])),
        "loss_clf": float(np.mean([r["global"]["loss_clf_accuracy"] for r in records[last5]])),
        "psnr": float(np.mean([r["global"]["psnr"] for r in records[last5]])),
        "energy": float(np.median([r["energy_j"] for r in records])),
        "core_h": float(sum(r["time_s"] for r in records) / 3600),
    }


def fmt(values: list[float], digits: int, sd: bool = True) -> str:
    mean = statistics.fmean(values)
    if not sd or len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="a dataset's folder: <method>/seed<k>/metrics.jsonl")
    ap.add_argument("--rounds", type=int, required=True, help="records a finished run has")
    a = ap.parse_args()
    print("| method | seeds | rounds 16-20 | last 5 rounds | slope, last 10 rounds | local acc | "
          "loss-clf acc | PSNR (dB) | median J/round | compute per run (core-h) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    cpus: dict[str, list[str]] = {}
    for method in sorted(p for p in a.runs.iterdir() if p.is_dir()):
        seeds, stats = [], []
        for seed in sorted(method.glob("seed*")):
            lines = (seed / "metrics.jsonl").read_text().splitlines() if (seed / "metrics.jsonl").is_file() else []
            if len(lines) != a.rounds:
                continue
            seeds.append(seed.name[4:])
            stats.append(run_stats([json.loads(x) for x in lines]))
            info = json.loads((seed / "provenance.json").read_text())["runtime"]["device_info"]
            cpus.setdefault(f"{info.get('name')} ({info.get('cpu_id')}, {info.get('capability')})", []).append(
                f"{method.name}/{seed.name}")
        if not stats:
            continue
        col = {k: [s[k] for s in stats] for k in stats[0]}
        print(f"| {method.name} | {','.join(seeds)} | {fmt(col['early'], 3)} | {fmt(col['last'], 3)} | "
              f"{fmt(col['slope'], 4)} | {fmt(col['local'], 3)} | {fmt(col['loss_clf'], 3)} | "
              f"{fmt(col['psnr'], 2, sd=False)} | {fmt(col['energy'], 3, sd=False)} | {fmt(col['core_h'], 2, sd=False)} |")
    print()
    for cpu, runs in cpus.items():
        print(f"- {cpu}: {', '.join(runs)}")


if __name__ == "__main__":
    main()
