"""`psfl run`: PSFL (or another method) with the in-process engine or on Flower's
simulation engine (``--engine flower``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from psfl.cli import add_device_argument, command


@command("run", help="Run federated training (default: PSFL on the bundled Fashion-MNIST sample)")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--out", help="run directory (default: a fresh folder under runs/)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its last complete round; --set rounds=N extends it "
                        "(no other field may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (default: refuse; --resume continues it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true",
                   help="write the metrics and summary.txt but draw no PNGs (a sweep of many runs; "
                        "`psfl report RUN_DIR` draws them later)")
    p.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess",
                   help="inprocess (default) or flower: Flower's simulation engine, one virtual SuperNode "
                        "per client (needs pip install 'psfl[flower]')")
    p.add_argument("--client-cpus", type=float, default=1.0,
                   help="flower engine: CPUs per simulated client (default 1)")
    p.add_argument("--client-gpus", type=float, default=0.0,
                   help="flower engine: GPUs per simulated client, e.g. 0.25 (default 0)")
    add_device_argument(p)


def data_overrides(args: argparse.Namespace) -> list[str]:
    """``--data-dir`` as a config override (made absolute by the config loader)."""
    import json

    return [f"data.data_dir={json.dumps(str(args.data_dir))}"] if getattr(args, "data_dir", None) else []


def announce_data(cfg) -> None:
    """First line of a run: where its data come from (the bundled sample is said aloud)."""
    d = cfg.data
    if d.source == "bundled":
        print(f"psfl: data: the bundled {d.dataset} sample (5,700 train / 1,000 test images), not the full "
              f"dataset; pass --data-dir DIR for {d.dataset}.npz", flush=True)
    else:
        print(f"psfl: data: {d.dataset} from {d.source} {d.data_dir or ''}".rstrip(), flush=True)


def run(args: argparse.Namespace) -> int:
    import sys

    from psfl.config import load_config
    from psfl.methods import check_run_config
    from psfl.experiments.report import format_table, summary_rows, write_report
    from psfl.runners.inprocess import new_run_dir, resume_config, run_federated

    overrides = list(args.overrides) + data_overrides(args)
    if args.resume:
        if args.config:
            print("psfl run: error: --config cannot be combined with --resume (the run keeps its config.toml; "
                  "use --set rounds=N to extend it)", file=sys.stderr)
            return 2
        run_dir = Path(args.resume)
        cfg = resume_config(run_dir, overrides)
    else:
        cfg = check_run_config(load_config(args.config, overrides))
        run_dir = Path(args.out) if args.out else new_run_dir("runs", cfg.method)
    announce_data(cfg)
    from psfl.utils.device import resolve_device

    device = resolve_device(args.device)  # a bad device exits 2 before any work
    if args.resume and args.overwrite:
        print("psfl run: error: --overwrite cannot be combined with --resume", file=sys.stderr)
        return 2
    if args.engine == "flower":
        from psfl.runners.flower import run_simulation
        from psfl.runners.inprocess import clear_run

        if args.overwrite and run_dir.is_dir():
            clear_run(run_dir)

        result = run_simulation(cfg, run_dir, resume=bool(args.resume), progress=False,
                                command=["psfl", *sys.argv[1:]], device=str(device), num_cpus=args.client_cpus,
                                num_gpus=args.client_gpus)
    else:
        result = run_federated(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                               command=["psfl", *sys.argv[1:]], device=device, overwrite=args.overwrite)
    paths = write_report(result.records, run_dir, plots=not args.no_plots)
    print(format_table(summary_rows(result.records, run_dir)))
    files = ["metrics.jsonl", "checkpoint.pt", "config.toml", "provenance.json", "summary.txt", *(p.name for p in paths)]
    print(f"run directory: {run_dir}  ({', '.join(files)})")
    return 0
