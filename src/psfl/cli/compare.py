"""`psfl compare`: methods side by side on the same partition, seed and SNR trace."""
from __future__ import annotations

import argparse
from pathlib import Path

from psfl.cli import add_device_argument, command

DEFAULT = "psfl,fedavg,stc,fttq,fedpaq"


@command("compare", help="Compare PSFL with FedAvg/STC/FTTQ/FedPAQ and ablations (Figs. 9-13)")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=DEFAULT,
                   help=f"comma list (default {DEFAULT}; also psfl-no-pld, psfl-no-agp, fedavg-csc, "
                        "fedprox, fedkd and plugins: see `psfl methods`)")
    p.add_argument("--config", help="TOML config file (shared by all methods)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--resume", action="store_true", help="continue methods from their checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess",
                   help="inprocess (default) or flower: each method on Flower's simulation engine")
    p.add_argument("--client-cpus", type=float, default=1.0, help="flower engine: CPUs per simulated client")
    p.add_argument("--client-gpus", type=float, default=0.0, help="flower engine: GPUs per simulated client")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from psfl.cli.run import announce_data, data_overrides
    from psfl.experiments.compare import compare
    from psfl.config import load_config
    from psfl.methods import check_run_config

    cfg = check_run_config(load_config(args.config, list(args.overrides) + data_overrides(args)))
    announce_data(cfg)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from psfl.utils.device import resolve_device

    rows, paths = compare(cfg, methods, Path(args.out), progress=not args.no_progress, resume=args.resume,
                          device=resolve_device(args.device), overwrite=args.overwrite, engine=args.engine,
                          client_cpus=args.client_cpus, client_gpus=args.client_gpus)
    print((Path(args.out) / "summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
