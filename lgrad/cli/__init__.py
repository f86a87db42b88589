"""The ``lgrad`` command line. Each subcommand lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func``."""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "CliError"]

# Subcommand modules, in the order ``lgrad --help`` lists them.
COMMANDS = [
    "lgrad.cli.experiments",
    "lgrad.cli.bench",
]


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lgrad",
        description="lgrad: learning rules built on local gradients, and the reproductions of their papers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"lgrad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
