"""Long, self-contained checks started in a background process when the session's tests
are collected, so they use the core the (mostly single-threaded, compile-bound) test
process leaves idle; their tests run last and read the results. See ``tests/conftest.py``.

Run as a script: ``python tests/background.py smoke OUT NAME...`` runs each experiment's
SMOKE config end to end into ``OUT`` (as ``run_experiment`` does in-process) and writes
``OUT/<name>.done`` holding ``ok`` or the traceback, one experiment after the other.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """``python tests/background.py ARGS`` (or ``python -c ARGS[1] ...`` for ``-c``), stdout and stderr to ``log``."""
    cmd = [sys.executable, *args] if args[0] == "-c" else [sys.executable, __file__, *args]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env=env or dict(os.environ),
                                stdout=f, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, log: Path) -> str:
    """The text of ``path`` once written; fails (with the log's tail) if ``proc`` ends without writing it."""
    while not path.exists():
        if proc.poll() is not None and not path.exists():
            raise AssertionError(f"background process exited {proc.returncode} before writing {path.name}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return path.read_text()


def _smoke(out: Path, names: list[str]) -> None:
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
    import lgrad.cli  # noqa: F401  (the CLI's XLA:CPU flags, as in tests/conftest.py)
    import jax

    jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))
    from lgrad.engine import discover, run_experiment

    for name in names:
        try:
            run_experiment(name, "quick", discover()[name].smoke, out / name, show_progress=False)
            status = "ok"
        except BaseException:  # reported by the experiment's test
            status = traceback.format_exc()
        tmp = out / f"{name}.done.tmp"
        tmp.write_text(status)
        tmp.replace(out / f"{name}.done")


if __name__ == "__main__":
    if sys.argv[1] != "smoke":
        sys.exit(f"unknown job {sys.argv[1]!r}")
    _smoke(Path(sys.argv[2]), sys.argv[3:])
