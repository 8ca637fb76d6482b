"""`psfl report RUN_DIR`: summary table and plots of a (finished or running) run."""
from __future__ import annotations

import argparse
from pathlib import Path

from psfl.cli import command


@command("report", help="Print the summary table of a run directory and (re)draw its plots")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--no-plots", action="store_true")


def run(args: argparse.Namespace) -> int:
    from psfl.utils.errors import PsflError
    from psfl.experiments.report import format_table, summary_rows, write_report
    from psfl.runners.inprocess import METRICS, read_records

    path = Path(args.run_dir)
    records = read_records(path / METRICS)
    if not records:
        raise PsflError(f"{path} holds no {METRICS} records")
    if not args.no_plots:
        write_report(records, path)
    print(format_table(summary_rows(records, path)))
    return 0
