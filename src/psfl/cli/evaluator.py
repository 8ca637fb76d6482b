"""`psfl evaluator`: train / list the frozen classifiers that score reconstructions."""
from __future__ import annotations

import argparse

from psfl.cli import add_device_argument, command


@command("evaluator", help="Train (and cache) or list the evaluator classifiers")
def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train an evaluator on the clean training set; print its test accuracy")
    t.add_argument("--dataset", required=True, help="mnist | fashion_mnist | cifar10 | ...")
    t.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    t.add_argument("--source", default="auto", help="auto | npz | torchvision | bundled (default auto)")
    t.add_argument("--input-preset", default="native", help="input space of the SC models (native | imagenet224)")
    t.add_argument("--arch", default="cnn", help="classifier architecture (see `psfl evaluator show`)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, one-cycle)")
    t.add_argument("--hflip", action="store_true", help="random horizontal flips (natural images only)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    add_device_argument(t)
    t.add_argument("--cache-dir", help="default $PSFL_CACHE/evaluators or ~/.cache/psfl/evaluators")
    t.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("show", help="list cached evaluators and the registered architectures")
    s.add_argument("--cache-dir", help="default $PSFL_CACHE/evaluators or ~/.cache/psfl/evaluators")


def _train(args: argparse.Namespace) -> int:
    import torch

    from psfl.evaluate import train_evaluator

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ev = train_evaluator(args.dataset, args.source, args.data_dir, args.input_preset, args.arch, args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, hflip=args.hflip,
                         cache_dir=args.cache_dir, progress=not args.no_progress, device=args.device)
    i = ev.info
    print(f"evaluator {i.arch} on {i.dataset} ({i.input_preset}, {i.img_size}px x {i.in_chans}ch, "
          f"{i.epochs} epochs, {i.train_seconds:.0f} s on {i.device})")
    print(f"clean test accuracy: {i.test_accuracy:.4f}")
    print(f"cached at: {i.path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from psfl.evaluate import CLASSIFIERS, default_cache_dir, list_evaluators

    print("architectures:")
    for name in CLASSIFIERS.names():
        print(f"  {name:<10} {CLASSIFIERS.get(name).description}")
    root = args.cache_dir or default_cache_dir()
    infos = list_evaluators(root)
    print(f"cached evaluators in {root}: {len(infos)}")
    if infos:
        print(f"  {'dataset':<14} {'input':<12} {'arch':<10} {'epochs':>6} {'test acc':>9}  path")
        for i in infos:
            print(f"  {i.dataset:<14} {i.input_preset:<12} {i.arch:<10} {i.epochs:>6} {i.test_accuracy:>9.4f}  {i.path}")
    return 0


_ACTIONS = {"train": _train, "show": _show}


def run(args: argparse.Namespace) -> int:
    return _ACTIONS[args.action](args)
