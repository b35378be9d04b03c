"""``diffspeed`` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from diffspeed.errors import DiffspeedError

#: Modules whose ``register(subparsers)`` adds commands; each command sets ``func(args) -> int``.
COMMAND_MODULES = (
    "diffspeed.commands",
    "diffspeed.bench.cli",
    "diffspeed.solvers.cli",
    "diffspeed.distill.cli",
    "diffspeed.cache.cli",
    "diffspeed.models.minisd.cli",
    "diffspeed.tune.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="diffspeed",
        description="Make diffusion models generate fast, and see what each speedup costs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffspeed`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DiffspeedError as e:
        print(f"diffspeed: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffspeed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
