"""`psfl methods`: list the federated methods (built-in and plugins of the entry point
group ``psfl.methods``) with their options, types and defaults."""
from __future__ import annotations

import argparse
import json

from psfl.cli import command


@command("methods", help="List federated methods (built-in and plugins) and their options")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'psfl*'")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")


def run(args: argparse.Namespace) -> int:
    from psfl.methods.plugins import method_table

    rows = method_table(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=2, default=repr))
        return 0
    for r in rows:
        origin = "" if r["origin"] == "built-in" else f"  [plugin: {r['origin']}]"
        print(f"{r['name']}{origin}")
        if r["summary"]:
            print(f"    {r['summary']}")
        for o in r["options"]:
            print(f"    method_options.{r['name']}.{o['name']}: {o['type']} = {json.dumps(o['default'], default=repr)}")
    print("set an option with --set method_options.<method>.<option>=VALUE or a [method_options.<method>] table")
    return 0
