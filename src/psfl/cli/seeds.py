"""`psfl seeds ROOT`: mean +- sd over seeds of runs laid out as ROOT/<name>/seed<k>/."""
from __future__ import annotations

import argparse
from pathlib import Path

from psfl.cli import command


@command("seeds", help="Table (mean ± sd over seeds) and plots of runs under ROOT/<name>/seed<k>/")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="folder holding <name>/seed<k>/metrics.jsonl")
    p.add_argument("--rounds", type=int, required=True, help="rounds of a finished run")
    p.add_argument("--last", type=int, default=5, help="rounds averaged per run (default 5)")
    p.add_argument("--names", default="", help="comma list of folder names in table order, label=folder to rename one (default: all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prefix", default="", help="file-name prefix of the outputs")


def run(args: argparse.Namespace) -> int:
    from psfl.utils.errors import PsflError
    from psfl.experiments.seeds import write_seed_report

    if args.rounds < 1 or args.last < 1:
        raise PsflError("--rounds and --last must be >= 1")
    names = [n.strip() for n in args.names.split(",") if n.strip()] or None
    for p in write_seed_report(Path(args.root), Path(args.out), args.rounds, args.last, names, args.prefix):
        print(p)
    if (md := Path(args.out) / f"{args.prefix}table.md").is_file():
        print(md.read_text())
    return 0
