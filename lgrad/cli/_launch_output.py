"""Only process 0 writes: the CLI side of runs under ``jax.distributed``."""
from __future__ import annotations

import argparse

from lgrad.distributed import multiprocess

__all__ = ["route_output"]


def route_output(args: argparse.Namespace) -> argparse.Namespace:
    """On processes other than 0, send ``args.out`` to a throw-away folder and hide
    progress bars, so only process 0 writes results (returns ``args``)."""
    if not multiprocess.is_initialized() or multiprocess.is_main_process():
        return args
    if getattr(args, "out", None) is not None:
        args.out = multiprocess.scratch_output_dir()
    if hasattr(args, "no_progress"):
        args.no_progress = True
    return args
