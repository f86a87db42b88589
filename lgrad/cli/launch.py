"""``lgrad launch``: run a command as N local processes joined by ``jax.distributed``.

    lgrad launch --processes 2 -- lgrad run dsgd-topology --quick

See :mod:`lgrad.distributed.multiprocess` for multi-host and Cloud TPU use.
"""
from __future__ import annotations

import argparse

from lgrad.cli import CliError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="run a command as N local processes under jax.distributed (gloo CPU collectives)",
        description=(
            "Start N copies of COMMAND on this machine, joined by jax.distributed over 127.0.0.1 "
            "(CPU, gloo collectives). Inside, jax.devices() lists every process's devices and "
            "run_workers(backend='mesh') spans them; only process 0 writes results. "
            "Example: lgrad launch --processes 2 -- lgrad run dsgd-topology --quick"
        ),
    )
    p.add_argument("--processes", "-n", type=int, required=True, help="number of processes N")
    p.add_argument("--devices-per-process", type=int, default=None, metavar="K",
                   help="CPU devices per process (JAX_NUM_CPU_DEVICES; default: jax's default, 1)")
    p.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--platform", default="cpu",
                   help="JAX_PLATFORMS for the processes (default: cpu; 'inherit' keeps the environment's)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="kill every process after this many seconds (exit status 124)")
    p.add_argument("--init-timeout", type=int, default=60, metavar="SECONDS",
                   help="how long processes wait for each other at start-up (default: 60)")
    p.add_argument("--show-all", action="store_true", help="also stream the output of processes 1..N-1")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after `--`")
    p.set_defaults(func=cmd_launch)


def cmd_launch(args: argparse.Namespace) -> int:
    from lgrad.distributed.multiprocess import launch

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("no command given; usage: lgrad launch --processes N -- COMMAND ...")
    try:
        return launch(
            command,
            args.processes,
            port=args.port,
            devices_per_process=args.devices_per_process,
            platform=None if args.platform == "inherit" else args.platform,
            timeout_s=args.timeout,
            init_timeout_s=args.init_timeout,
            quiet_others=not args.show_all,
        )
    except ValueError as e:
        raise CliError(str(e)) from None
