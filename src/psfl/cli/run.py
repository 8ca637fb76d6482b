"""`psfl run`: PSFL (or another method) with the in-process engine."""
from __future__ import annotations

import argparse
from pathlib import Path

from psfl.cli import command


@command("run", help="Run federated training (default: PSFL on the bundled Fashion-MNIST sample)")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--out", help="run directory (default: a fresh folder under runs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last complete round")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from psfl.config import load_config
    from psfl.report import format_table, summary_rows, write_report
    from psfl.runners.inprocess import new_run_dir, resume_config, run_federated

    if args.resume:
        run_dir = Path(args.resume)
        cfg = resume_config(run_dir)
    else:
        cfg = load_config(args.config, args.overrides)
        if args.data_dir:
            cfg.data.data_dir = args.data_dir
        run_dir = Path(args.out) if args.out else new_run_dir("runs", cfg.method)
    result = run_federated(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    paths = write_report(result.records, run_dir)
    print(format_table(summary_rows(result.records)))
    print(f"run directory: {run_dir}  (metrics.jsonl, checkpoint.pt, config.toml, "
          + ", ".join(p.name for p in paths) + ")")
    return 0
