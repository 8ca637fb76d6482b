"""`psfl models`: list model presets with their parameter counts (built on the meta
device, so even the paper presets are instant)."""
from __future__ import annotations

import argparse
import json

from psfl.cli import command


@command("models", help="List model presets, their parameter counts and bandwidth ratios (k/n)")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'cpu-*'")
    p.add_argument("--img-size", type=int, help="count native-size presets at this size (default 28)")
    p.add_argument("--in-chans", type=int, help="count native-size presets with these channels (default 1)")
    p.add_argument("--bandwidth-ratio", metavar="K/N",
                   help="build every preset at this k/n (e.g. 1/12; default: each preset's own, 1/6 for cpu-*)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from psfl.models import format_ratio, model_table, parse_ratio

    ratio = parse_ratio(args.bandwidth_ratio, "--bandwidth-ratio") if args.bandwidth_ratio else None
    rows = model_table(args.pattern, img_size=args.img_size, in_chans=args.in_chans, bandwidth_ratio=ratio)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<10} {'family':<6} {'input':<12} {'size':>9} {'params':>13} {'vs M':>6}  "
          f"{'D':>5} {'c':>4} {'grid':>6} {'symbols':>8} {'k/n':>7}  description")
    for r in rows:
        ratio = f"{r['ratio_vs_M']:.2f}" if r.get("ratio_vs_M") is not None else ""
        size = f"{r['img_size']}x{r['img_size']}x{r['in_chans']}"
        grid = "x".join(map(str, r["grid"]))
        print(f"{r['name']:<10} {r['family']:<6} {r['input_preset']:<12} {size:>9} {r['params']:>13,} "
              f"{ratio:>6}  {r['sem_dim']:>5} {r['channel_dim']:>4} {grid:>6} {r['channel_symbols']:>8,} "
              f"{format_ratio(r['bandwidth_ratio']):>7}  {r['description']}")
    print("symbols: real channel symbols per image; k/n: complex channel symbols per source value "
          "(the bandwidth ratio of deep JSCC). Bits and energy count model uploads, not these symbols.")
    return 0
