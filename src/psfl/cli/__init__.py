"""`psfl` command line. Thin: each subcommand lives in its own module of this package,
registers itself with :func:`command`, parses arguments and calls one library function.
The top layer: it may import every psfl package and nothing imports it (but ``psfl.__main__``).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from dataclasses import dataclass
from typing import Callable

from psfl.utils.errors import DivergenceError, PsflError, RoundFailedError
from psfl.utils.registry import Registry


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: Registry[Command] = Registry("command")


def command(name: str, help: str):
    """Decorator for a module-level ``configure(parser)`` function; the module's
    ``run(args)`` is looked up lazily next to it."""

    def deco(configure: Callable[[argparse.ArgumentParser], None]):
        module = sys.modules[configure.__module__]
        COMMANDS.register(name)(Command(help, configure, lambda a: module.run(a)))
        return configure

    return deco


def add_device_argument(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    """``--device auto|cpu|cuda[:i]`` (default ``cpu``: reproducible numbers on any
    machine). Resolve it with :func:`psfl.utils.device.resolve_device` in the command, so a bad
    value is a one-line error (exit 2)."""
    parser.add_argument("--device", default=default, metavar="auto|cpu|cuda[:i]",
                        help=f"where models, data, channel noise and metrics run (default {default}; "
                             "auto = cuda if available)")


def _load_commands() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="psfl",
        description="Personalized federated learning of GAI-assisted semantic communication.",
    )
    from psfl import __version__

    parser.add_argument("--version", action="version", version=f"psfl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        cmd = COMMANDS.get(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (DivergenceError, RoundFailedError) as e:
        print(f"psfl {args.command}: error: {e}", file=sys.stderr)
        return 3
    except PsflError as e:
        print(f"psfl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `psfl models --json | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
