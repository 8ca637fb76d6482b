"""Copy the issue-9 study's finished Fashion-MNIST runs into `psfl reproduce`'s run store.

The study (configs/psfl-study.toml + the pinned settings in experiments/psfl-study/all.queue)
and the cpu scale (experiments/reproduce/scale-cpu.toml) give these runs the same config,
field for field; this script checks that with the same test `psfl reproduce` applies
(`check_existing`) before copying, so a run is never reused under another config.

    python experiments/reproduce/import_study_runs.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from psfl.experiments.reproduce import check_existing, experiment_names, load_experiment, load_scale, plan, status

STUDY = {"warmup5": "psfl", "psfl-plus": "psfl-plus", "no-agp": "psfl-no-agp", "no-pld": "psfl-no-pld",
         "fedavg": "fedavg", "stc": "stc", "fttq": "fttq", "fedpaq": "fedpaq"}
FILES = ("metrics.jsonl", "config.toml", "provenance.json", "summary.txt", "command.txt", "checkpoint.pt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--study", default="results/psfl-study/runs")
    ap.add_argument("--runs", default="results/runs")
    args = ap.parse_args()
    exps = [load_experiment(n) for n in experiment_names()]
    runs = plan(exps, load_scale("cpu"), [0, 1, 2], Path(args.runs), ["fashion_mnist"],
                [f'data.data_dir="{Path(args.data_dir).resolve()}"'])
    by_name = {(r.name, r.seed): r for r in runs}
    for study_name, name in STUDY.items():
        for seed in (0, 1, 2):
            src = Path(args.study) / study_name / f"seed{seed}"
            r = by_name[(name, seed)]
            if status(r) == "done" or not (src / "metrics.jsonl").is_file():
                continue
            lines = (src / "metrics.jsonl").read_text().splitlines()
            if len(lines) < r.cfg.rounds:
                print(f"skip {src}: unfinished ({len(lines)}/{r.cfg.rounds})")
                continue
            r.path.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "config.toml", r.path / "config.toml")
            try:
                check_existing(r)
            except Exception:
                (r.path / "config.toml").unlink()
                raise
            for f in FILES:
                if (src / f).is_file():
                    shutil.copy(src / f, r.path / f)
            print(f"{src} -> {r.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
