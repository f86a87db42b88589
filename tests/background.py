"""Long, self-contained checks run in one background process, started (at low priority)
when the session's tests are collected, so they use the core that the mostly
single-threaded, compile-bound test process leaves idle; their tests run last and read
what it wrote. See ``tests/conftest.py``.

As a script: ``python tests/background.py OUT [--mesh SCRIPT ARG...] [--smoke NAME...]``
runs, one after the other,

* ``--mesh``: ``python -c "$(cat SCRIPT)" ARG...`` with ``JAX_NUM_CPU_DEVICES=8`` (output to
  ``OUT/mesh.log``, its exit status to ``OUT/mesh.done``), and
* ``--smoke``: each experiment's SMOKE config end to end into ``OUT/<name>/`` (as
  ``run_experiment`` does in-process), writing ``OUT/<name>.done`` = ``ok`` or the traceback.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESH_ENV = {"JAX_NUM_CPU_DEVICES": "8", "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}


def start(out: Path, mesh: list[str], smoke: list[str]) -> subprocess.Popen:
    """The background process (it lowers its priority by 10: the test process keeps its core); its log is ``out/background.log``."""
    args = [sys.executable, __file__, str(out), *(["--mesh", *mesh] if mesh else []), *(["--smoke", *smoke] if smoke else [])]
    with open(out / "background.log", "wb") as log:
        # its own process group, so that stop() also ends the mesh subprocess it may be running
        return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Kill the background process and whatever it started (its process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_for(path: Path, proc: subprocess.Popen) -> str:
    """The text of ``path`` once written; fails (with the log's tail) if ``proc`` ends without writing it."""
    while not path.exists():
        if proc.poll() is not None and not path.exists():
            log = path.parent / "background.log"
            raise AssertionError(f"background process exited {proc.returncode} before writing {path.name}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return path.read_text()


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _mesh(out: Path, script_and_args: list[str]) -> None:
    with open(out / "mesh.log", "wb") as log:
        script, *args = script_and_args
        rc = subprocess.run([sys.executable, "-c", Path(script).read_text(), *args], cwd=ROOT, env=dict(os.environ, **MESH_ENV),
                            stdout=log, stderr=subprocess.STDOUT).returncode
    _write(out / "mesh.done", str(rc))


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
        _write(out / f"{name}.done", status)


def _exit_with_parent(parent: int) -> None:
    """Kill this process group (this process and the mesh subprocess) once the test
    process that started it is gone, also when it was killed without running
    ``stop`` (SIGTERM from a CI timeout, SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    os.nice(10)  # here, not in a preexec_fn: forking the multithreaded test process is unsafe
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    out, rest = Path(sys.argv[1]), sys.argv[2:]
    smoke = rest[rest.index("--smoke") + 1:] if "--smoke" in rest else []
    mesh = rest[rest.index("--mesh") + 1:len(rest) - len(smoke) - (1 if smoke else 0)] if "--mesh" in rest else []
    if mesh:
        _mesh(out, mesh)
    if smoke:
        _smoke(out, smoke)
