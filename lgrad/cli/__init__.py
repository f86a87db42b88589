"""The ``lgrad`` command line. Each subcommand lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func``."""
from __future__ import annotations

import os

# XLA runs its own thread pool; jaxlib's CPU linear algebra (Cholesky, LU, eigh) calls
# scipy's OpenBLAS, whose spin-waiting threads then fight XLA's for the cores: on a
# busy 2-core machine a 256x256 Cholesky took 1 s instead of 1 ms. One BLAS thread
# (unless the user chose otherwise) must be set before numpy/scipy load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

__all__ = ["main", "CliError"]

# Subcommand modules, in the order ``lgrad --help`` lists them.
COMMANDS = [
    "lgrad.cli.experiments",
    "lgrad.cli.bench",
    "lgrad.cli.launch",
    "lgrad.cli.sweep",
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
    dist = None
    if os.environ.get("LGRAD_DISTRIBUTED") or os.environ.get("LGRAD_COORDINATOR"):
        # Started by `lgrad launch` (or on a cluster): join jax.distributed before jax runs.
        from lgrad.distributed import multiprocess as dist

        dist.initialize_from_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if dist is not None:
        dist.route_output(args)  # only process 0 writes results
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"lgrad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lgrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lgrad list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
