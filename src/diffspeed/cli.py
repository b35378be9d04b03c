"""``diffspeed`` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from diffspeed.errors import DiffspeedError

#: Modules whose ``register(subparsers)`` adds commands; each command sets ``func(args) -> int``.
COMMAND_MODULES = (
    "diffspeed.commands",
    "diffspeed.bench.cli",
    "diffspeed.solvers.cli",
    "diffspeed.distill.cli",
    "diffspeed.cache.cli",
    "diffspeed.compress.cli",
    "diffspeed.models.minisd.cli",
    "diffspeed.tune.cli",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless the help already says its default, the
    option is a flag or its default is None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS)
            or action.nargs == 0
            or isinstance(action.default, bool)
        ):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` (every command's parser, through
    ``add_subparsers``, is one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    parser = Parser(
        prog="diffspeed",
        description="Make diffusion models generate fast, and see what each speedup costs. "
        "Run 'diffspeed COMMAND --help' for a command's options.",
        epilog="example: diffspeed demo --threads 1",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
