"""Run lgrad across processes and hosts with ``jax.distributed``.

One program, many processes: every process runs the same command; after
``jax.distributed.initialize`` ``jax.devices()`` lists all processes' devices, and
``run_workers(..., backend="mesh")`` / ``make_program`` build their mesh over all of
them (see :mod:`lgrad.distributed.workers`). Only process 0 writes results.

Three ways to start:

* **Locally, N processes on one machine** (CPU, gloo collectives over 127.0.0.1)::

      lgrad launch --processes 2 -- lgrad run dsgd-topology --quick
      lgrad launch --processes 2 --devices-per-process 4 -- python my_script.py

  ``launch`` picks a free port, starts N children with the ``LGRAD_*`` variables
  below, streams process 0's output, keeps the others' in log files (printed if
  they fail), and kills everyone if one process fails or ``--timeout`` passes.
* **Several hosts, explicit coordinator**: on host i of N run::

      LGRAD_COORDINATOR=host0:12345 LGRAD_NUM_PROCESSES=N LGRAD_PROCESS_ID=i \\
          lgrad run NAME --full

* **Cloud TPU pods / Slurm / Open MPI** (jax auto-detects everything)::

      LGRAD_DISTRIBUTED=auto lgrad run NAME --full     # on every host

The ``lgrad`` CLI calls :func:`initialize_from_env` before anything touches jax;
your own scripts call it (or :func:`initialize`) first thing.

Environment variables read by :func:`initialize_from_env`:

``LGRAD_DISTRIBUTED``    ``auto`` (jax's cluster auto-detection) or ``1``
``LGRAD_COORDINATOR``    ``host:port`` of process 0's coordinator service
``LGRAD_NUM_PROCESSES``  number of processes N
``LGRAD_PROCESS_ID``     this process's id in [0, N)
``LGRAD_INIT_TIMEOUT``   seconds to wait for all processes (default 60)
``LGRAD_CPU_COLLECTIVES`` ``gloo`` (default) or ``mpi``: cross-process CPU collectives
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "ENV_VARS",
    "free_port",
    "initialize",
    "initialize_from_env",
    "is_initialized",
    "is_main_process",
    "launch",
    "process_count",
    "process_index",
    "scratch_output_dir",
    "to_host",
]

ENV_VARS = (
    "LGRAD_DISTRIBUTED",
    "LGRAD_COORDINATOR",
    "LGRAD_NUM_PROCESSES",
    "LGRAD_PROCESS_ID",
    "LGRAD_INIT_TIMEOUT",
    "LGRAD_CPU_COLLECTIVES",
)

_INITIALIZED = False


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 60,
    cpu_collectives: str = "gloo",
) -> None:
    """``jax.distributed.initialize`` with CPU collectives enabled (call before jax runs).

    With no arguments jax auto-detects the cluster (Cloud TPU, Slurm, Open MPI).
    ``cpu_collectives`` selects the cross-process collectives of the CPU backend
    (``jax_cpu_collectives_implementation``; gloo ships with jaxlib).
    """
    global _INITIALIZED
    import jax

    if _INITIALIZED:
        return
    if cpu_collectives not in ("gloo", "mpi"):
        raise ValueError(f"cpu_collectives must be 'gloo' or 'mpi', got {cpu_collectives!r}")
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in [0, {num_processes}), got {process_id!r}")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(timeout_s),
    )
    _INITIALIZED = True


def initialize_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Initialise ``jax.distributed`` from the ``LGRAD_*`` variables; False if unset."""
    env = os.environ if environ is None else environ
    mode = env.get("LGRAD_DISTRIBUTED", "").strip().lower()
    coordinator = env.get("LGRAD_COORDINATOR")
    if not mode and not coordinator:
        return False
    timeout = int(env.get("LGRAD_INIT_TIMEOUT", "60"))
    collectives = env.get("LGRAD_CPU_COLLECTIVES", "gloo")
    if mode == "auto" and not coordinator:
        initialize(timeout_s=timeout, cpu_collectives=collectives)
        return True
    try:
        n = int(env["LGRAD_NUM_PROCESSES"])
        i = int(env["LGRAD_PROCESS_ID"])
    except (KeyError, ValueError):
        raise ValueError(
            "LGRAD_COORDINATOR needs integer LGRAD_NUM_PROCESSES and LGRAD_PROCESS_ID "
            "(or set LGRAD_DISTRIBUTED=auto for jax's cluster auto-detection)"
        ) from None
    initialize(coordinator, n, i, timeout_s=timeout, cpu_collectives=collectives)
    return True


def is_initialized() -> bool:
    """Whether this process joined a ``jax.distributed`` job through lgrad."""
    return _INITIALIZED


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0 (the one that writes results)."""
    return process_index() == 0


def scratch_output_dir() -> str | None:
    """Where a process other than 0 should write its (discarded) outputs.

    ``None`` on process 0 or outside ``jax.distributed``; otherwise a fresh temporary
    folder, removed at exit, so that only process 0 writes results.
    """
    if not _INITIALIZED or is_main_process():
        return None
    tmp = tempfile.mkdtemp(prefix=f"lgrad-process{process_index()}-")
    atexit.register(shutil.rmtree, tmp, True)
    return tmp


def to_host(tree: Any) -> Any:
    """A pytree of numpy arrays; arrays sharded over other processes are gathered."""
    import jax

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _resolve(command: Sequence[str]) -> list[str]:
    command = list(command)
    if command and command[0] == "lgrad":  # the same interpreter and package as ours
        return [sys.executable, "-m", "lgrad.cli", *command[1:]]
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def launch(
    command: Sequence[str],
    processes: int,
    *,
    port: int | None = None,
    devices_per_process: int | None = None,
    platform: str | None = "cpu",
    timeout_s: float | None = None,
    init_timeout_s: int = 60,
    env: Mapping[str, str] | None = None,
    log_dir: str | os.PathLike | None = None,
    quiet_others: bool = True,
) -> int:
    """Run ``command`` as ``processes`` local processes joined by ``jax.distributed``.

    Process 0 hosts the coordinator on ``127.0.0.1:port`` (a free port by default).
    A leading ``lgrad`` / ``python`` in ``command`` runs with this interpreter.

    Args:
      command: argv of the program every process runs (it must call
        :func:`initialize_from_env` before using jax; the ``lgrad`` CLI does).
      processes: number of processes N >= 1.
      devices_per_process: CPU devices per process (``JAX_NUM_CPU_DEVICES``).
      platform: ``JAX_PLATFORMS`` for the children (``"cpu"``; None: inherit).
      timeout_s: kill every process after this many seconds (exit status 124).
      init_timeout_s: how long the processes wait for each other at start-up.
      env: extra environment variables.
      log_dir: where processes 1..N-1 write ``process_<i>.log`` (default: a
        temporary folder, removed when all succeed).
      quiet_others: keep processes 1..N-1's output in their logs (else inherit).

    Returns:
      0 if every process succeeded, else the first failing exit status (124 on
      timeout). On failure the failing processes' logs are printed to stderr.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer, got {processes!r}")
    if devices_per_process is not None and (not isinstance(devices_per_process, int) or devices_per_process < 1):
        raise ValueError(f"devices_per_process must be a positive integer, got {devices_per_process!r}")
    argv = _resolve(command)
    if not argv:
        raise ValueError("no command to launch (put it after `--`)")
    port = free_port() if port is None else int(port)
    own_logs = log_dir is None
    logs = Path(tempfile.mkdtemp(prefix="lgrad-launch-") if own_logs else log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ)
    base.update(env or {})
    base.update(
        LGRAD_DISTRIBUTED="1",
        LGRAD_COORDINATOR=f"127.0.0.1:{port}",
        LGRAD_NUM_PROCESSES=str(processes),
        LGRAD_INIT_TIMEOUT=str(int(init_timeout_s)),
    )
    if platform:
        base["JAX_PLATFORMS"] = platform
    if devices_per_process is not None:
        base["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
    procs: list[subprocess.Popen] = []
    files = []
    try:
        for i in range(processes):
            child_env = dict(base, LGRAD_PROCESS_ID=str(i))
            if i == 0 or not quiet_others:
                out = None
            else:
                out = open(logs / f"process_{i}.log", "w")
                files.append(out)
            procs.append(
                subprocess.Popen(argv, env=child_env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                 start_new_session=True)
            )
        status = _wait(procs, timeout_s)
    except BaseException:
        _kill(procs)
        raise
    finally:
        for f in files:
            f.close()
    failed = [i for i, p in enumerate(procs) if p.returncode not in (0, None)]
    if status != 0:
        for i in failed:
            log = logs / f"process_{i}.log"
            if log.exists():
                print(f"--- lgrad launch: process {i} exited with {procs[i].returncode}; its log:", file=sys.stderr)
                print(log.read_text()[-4000:], file=sys.stderr)
        if status == 124:
            print(f"lgrad launch: timed out after {timeout_s} s; all processes killed", file=sys.stderr)
    elif own_logs:
        shutil.rmtree(logs, ignore_errors=True)
    return status


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the child's own session: it and its children
            except (ProcessLookupError, PermissionError):
                p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


def _wait(procs: list[subprocess.Popen], timeout_s: float | None) -> int:
    """Wait for all; on the first failure or the timeout kill the rest."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (0, None)]
        if bad:
            _kill(procs)
            return int(bad[0]) if bad[0] > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            _kill(procs)
            return 124
        time.sleep(0.05)
