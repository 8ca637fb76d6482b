"""`psfl tune`: one grid and budget for every method, chosen on validation data."""
from __future__ import annotations

import argparse
from pathlib import Path

from psfl.cli import add_device_argument, command


@command("tune", help="Choose each method's settings from one grid on validation data (data.validation_samples)")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", required=True, help="comma list, e.g. psfl,fedavg,stc,fttq,fedpaq")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="one axis of the grid (repeatable), e.g. --grid train.lr=0.01,0.03 --grid train.mse_weight=1,4")
    p.add_argument("--config", help="TOML config file (the budget every method gets)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides; data.validation_samples=N (> 0) is required")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--last", type=int, default=5, help="rounds averaged into a run's score (default 5)")
    p.add_argument("--out", required=True, help="output folder (runs, grid.csv, choices.json, choices.md)")
    p.add_argument("--widen", type=int, default=0, metavar="N",
                   help="where the choice sits on the grid's edge, try up to N more values outward per side "
                        "(the grid's ratio), one axis at a time, the same for every method (default 0)")
    p.add_argument("--reuse", metavar="DIR", action="append", default=[],
                   help="an earlier psfl tune folder whose finished runs (same config) stand in for this call's "
                        "(repeatable: the first folder holding a point's run is used)")
    p.add_argument("--evaluators", metavar="DIR",
                   help="folder of kept evaluators: they go into the evaluator cache before any run, and the "
                        "ones the scored runs used are copied there (commit it with the runs)")
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from psfl.cli.run import announce_data, data_overrides
    from psfl.config import load_config
    from psfl.experiments.tune import parse_grid, tune
    from psfl.utils.device import resolve_device
    from psfl.utils.errors import PsflError

    cfg = load_config(args.config, list(args.overrides) + data_overrides(args))
    announce_data(cfg)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise PsflError(f"--seeds {args.seeds!r}: a comma list of integers") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tune(cfg, methods, parse_grid(args.grid), seeds, Path(args.out), args.last, progress=not args.no_progress,
         device=resolve_device(args.device), widen=args.widen, reuse=[Path(r) for r in args.reuse],
         evaluators=Path(args.evaluators) if args.evaluators else None)
    print((Path(args.out) / "choices.md").read_text())
    return 0
