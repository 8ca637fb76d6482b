"""`psfl reproduce`: Figs. 4-13 of the paper (and reconstruction grids) as resumable
experiments (``experiments/reproduce/*.toml``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from psfl.cli import add_device_argument, command


@command("reproduce", help="Reproduce the paper's figures (fig4 ... fig13, recon, all): runs, plots, tables")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("figures", nargs="+", metavar="FIG",
                   help="experiment names (files in --experiments: fig4 ... fig13, recon) or all")
    p.add_argument("--scale", default="cpu",
                   help="cpu (default: cpu presets, a budget for 2 cores) or paper (Table I models at "
                        "224 px, for a GPU machine with --device cuda); a scale-<name>.toml in --experiments")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout); datasets without a file are "
                                      "skipped and reported")
    p.add_argument("--datasets", help="comma list: run only these (each must have data); the figures are still "
                                      "drawn over every dataset from its finished runs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every run (changes the run folders' names)")
    p.add_argument("--out", default="results", help="figures go to OUT/<fig>/ (default results)")
    p.add_argument("--runs", help="run folders go to RUNS/<scale>/<dataset>/<run>/seed<k>/ (default OUT/runs)")
    p.add_argument("--experiments", help="folder of experiment files (default: the repository's "
                                         "experiments/reproduce)")
    p.add_argument("--evaluators", help="folder of kept evaluators (default OUT/evaluators): they go into the "
                                        "evaluator cache before any run, and the ones the runs used are copied "
                                        "there, so that every machine and seed uses the same classifiers")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes sharing the queue)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs, their state and their compute (recorded, and projected from the round "
                        "times of runs of the same cost at --jobs); run nothing")
    p.add_argument("--timings", action="append", default=[], metavar="DIR",
                   help="--dry-run: also take round times from the run folders under DIR (e.g. another scale's)")
    p.add_argument("--full", action="store_true",
                   help="ignore the scale's budget cuts ([experiments.<fig>] datasets / drop): run every "
                        "experiment's every series on every dataset it names")
    p.add_argument("--figures-only", action="store_true", help="draw from the finished runs; run nothing")
    p.add_argument("--no-figures", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from psfl.cli.run import data_overrides
    from psfl.utils.device import resolve_device
    from psfl.utils.errors import PsflError
    from psfl.experiments.reproduce import EXPERIMENTS_DIR, reproduce

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise PsflError(f"--seeds {args.seeds!r}: expected a comma list of integers") from None
    if not seeds or any(s < 0 for s in seeds):
        raise PsflError(f"--seeds {args.seeds!r}: expected a comma list of integers >= 0")
    if args.jobs < 1:
        raise PsflError("--jobs must be >= 1")
    device = resolve_device(args.device)
    out = Path(args.out)
    argv = [a for a in sys.argv[1:] if a != "--jobs" and not a.startswith("--jobs=")]
    if "--jobs" in sys.argv[1:]:  # drop its value too
        i = sys.argv[1:].index("--jobs")
        argv = sys.argv[1:1 + i] + sys.argv[3 + i:]
    worker = [sys.executable, "-m", "psfl", *argv, "--no-figures", "--no-progress"]
    res = reproduce(args.figures, args.scale, seeds, Path(args.runs) if args.runs else out / "runs", out,
                    datasets=[d.strip() for d in args.datasets.split(",")] if args.datasets else None,
                    extra=list(args.overrides) + data_overrides(args), device=device,
                    progress=not args.no_progress, run=not args.figures_only, figures=not args.no_figures,
                    dry_run=args.dry_run, worker_argv=worker, jobs=args.jobs,
                    root=Path(args.experiments) if args.experiments else EXPERIMENTS_DIR,
                    evaluators=Path(args.evaluators) if args.evaluators else out / "evaluators",
                    timings=[Path(d) for d in args.timings], full=args.full)
    if args.dry_run:
        done = sum(1 for r in res.runs if (r.path / "metrics.jsonl").exists())
        print(f"{len(res.runs)} runs ({done} started or finished)")
        return 0
    for p in res.figures:
        print(f"wrote {p}")
    for k, why in res.failed.items():
        print(f"psfl reproduce: {k}: {why}", file=sys.stderr)
    return 1 if res.failed else 0
