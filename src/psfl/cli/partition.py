"""`psfl partition`: show (and plot) the non-IID split of a dataset over the clients."""
from __future__ import annotations

import argparse

from psfl.cli import command


@command("partition", help="Print the per-client class counts of a partition (and plot it like Fig. 6)")
def configure(p: argparse.ArgumentParser) -> None:
    from psfl.data import DATASETS, PARTITIONERS, SOURCES

    p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS.names())
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--source", default="auto", choices=SOURCES.names(),
                   help="where the data come from (auto: npz in --data-dir, else the bundled sample)")
    p.add_argument("--clients", type=int, default=9, help="number of clients K")
    p.add_argument("--scheme", default="dirichlet", choices=PARTITIONERS.names())
    p.add_argument("--alpha", "-r", type=float, default=0.9, help="Dirichlet concentration r")
    p.add_argument("--sizes", default="table1",
                   help="client volumes: table1 (Table I scaled to the data), none, or a comma list")
    p.add_argument("--min-size", type=int, default=10, help="guaranteed samples per client")
    p.add_argument("--local-test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PATH.png", help="write a stacked bar chart (Fig. 6 style)")


def run(args: argparse.Namespace) -> int:
    from psfl.data import format_partition_table, label_skew, load_dataset, make_partition, plot_partition

    ds = load_dataset(args.dataset, source=args.source, data_dir=args.data_dir)
    part = make_partition(ds.y_train, num_classes=ds.num_classes, num_clients=args.clients,
                          scheme=args.scheme, alpha=args.alpha, sizes=args.sizes,
                          min_size=args.min_size, local_test_fraction=args.local_test_fraction,
                          seed=args.seed)
    r = f", r={args.alpha:g}" if args.scheme == "dirichlet" else ""
    print(f"{args.dataset} ({ds.source}): {len(ds.y_train)} training samples, "
          f"{args.clients} clients, {args.scheme}{r}, sizes={args.sizes}, seed={args.seed}")
    print(format_partition_table(part, ds.info.class_names))
    print(f"label skew (mean total-variation distance to the pooled labels): "
          f"{label_skew(part.class_counts):.3f}")
    if args.plot:
        path = plot_partition(part, args.plot, ds.info.class_names,
                              title=f"{args.dataset}: {args.scheme}{r}")
        print(f"plot: {path}")
    return 0
