"""The ``lgrad`` command line. Each subcommand lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func``."""
from __future__ import annotations

import os

# XLA runs its own thread pool; jaxlib's CPU linear algebra (Cholesky, LU, eigh) calls
# scipy's OpenBLAS, whose spin-waiting threads then fight XLA's for the cores: on a
# busy 2-core machine a 256x256 Cholesky took 1 s instead of 1 ms. One BLAS thread
# (unless the user chose otherwise) must be set before numpy/scipy load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def cpu_xla_flags() -> None:
    """Take reductions out of XLA:CPU's YNNPACK fusions (jaxlib 0.10.x), unless the user
    set ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` already.

    On jaxlib 0.10.2 a mean over a short leading axis -- every ``comm.pmean`` over
    vmapped workers, every mean over seeds -- goes to YNNPACK's reduce, which is
    50-100x slower than XLA's own loop: ``jnp.mean`` of a (12, 401408) float32 array
    took 66-241 ms against 1.4 ms with ``-reduce`` (2-core CPU). Must run before jax
    initialises its backend; the flag name is checked for the 0.10 series only (an
    unknown XLA flag aborts the process), so other jaxlib versions are left alone.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return
    try:
        from importlib.metadata import version

        series = version("jaxlib").split(".")[:2]
    except Exception:  # noqa: BLE001 - no jaxlib metadata: change nothing
        return
    if series == ["0", "10"]:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type=-reduce".strip()


cpu_xla_flags()

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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"lgrad: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lgrad",
        description="lgrad: learning rules built on local gradients, and the reproductions of their papers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    User errors print one line and return 2; Ctrl-C/SIGTERM return 130. Called as the
    ``lgrad`` program (``argv`` None), an interrupted command ends the process at once
    (``os._exit``) instead of waiting for XLA work still in flight.
    """
    status = _main(argv)
    if status == 130 and argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return status


def _main(argv: list[str] | None) -> int:
    dist = None
    if os.environ.get("LGRAD_DISTRIBUTED") or os.environ.get("LGRAD_COORDINATOR"):
        # Started by `lgrad launch` (or on a cluster): join jax.distributed before jax runs.
        from lgrad.distributed import multiprocess as dist

        dist.initialize_from_env()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if dist is not None:
        from lgrad.cli._launch_output import route_output

        route_output(args)  # only process 0 writes results
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"lgrad: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # a ConfigError raised past a command's own checks
        from lgrad.engine.config import ConfigError

        if not isinstance(e, ConfigError):
            raise
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
