"""Two local processes under jax.distributed (gloo CPU collectives) give the same
numbers as one process; launcher timeouts and failures do not hang."""
from __future__ import annotations

import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgrad.distributed import comm, multiprocess, run_workers, topology

# Each process: 1 CPU device, so the 2-device mesh spans both processes.
SCRIPT = textwrap.dedent(
    """
    import sys
    from lgrad.distributed import multiprocess
    assert multiprocess.initialize_from_env(), "LGRAD_* variables missing"
    import jax, jax.numpy as jnp, numpy as np
    from lgrad.distributed import comm, run_workers, topology
    sys.path.insert(0, sys.argv[2])
    from test_multiprocess import _program_inputs, _step

    x, targets = _program_inputs()
    out = run_workers(_step, x, targets, n_workers=4, backend="mesh")  # 2 workers per device
    out2 = run_workers(_step, x[:2], targets[:2], n_workers=2, backend="mesh")  # 1 per device
    if multiprocess.is_main_process():
        np.savez(sys.argv[1], devices=jax.device_count(), processes=jax.process_count(),
                 **{f"a{i}": np.asarray(v) for i, v in enumerate(out)},
                 **{f"b{i}": np.asarray(v) for i, v in enumerate(out2)})
    """
)


def _program_inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)


def _step(x, target):
    """One D-SGD step: local gradient step on |x - target|^2 / 2, ring gossip."""
    n = comm.axis_size()
    w = topology.metropolis_hastings(topology.ring(n) if n > 2 else topology.complete(n))
    with comm.counting() as sent:
        x = topology.gossip(x - 0.5 * (x - target), w)
        mean = comm.pmean(x)
        gathered = comm.all_gather(x)
    return x, mean, gathered.sum(0), jnp.asarray(sent.bytes)


def test_two_processes_match_one(tmp_path):
    script = tmp_path / "mp_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.npz"
    start = time.perf_counter()
    rc = multiprocess.launch(
        [sys.executable, str(script), str(out), str(__import__("pathlib").Path(__file__).parent)],
        2,
        devices_per_process=1,
        timeout_s=120,
        init_timeout_s=60,
        log_dir=tmp_path / "logs",
    )
    logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert rc == 0, (
        f"2-process jax.distributed run failed (exit {rc}, {time.perf_counter() - start:.0f} s): gloo CPU "
        f"collectives unavailable or the processes could not reach 127.0.0.1. Logs:\n{logs}"
    )
    got = np.load(out)
    assert int(got["devices"]) == 2 and int(got["processes"]) == 2
    x, targets = _program_inputs()
    for prefix, n in (("a", 4), ("b", 2)):
        want = run_workers(_step, x[:n], targets[:n], n_workers=n, backend="vmap")
        for i, v in enumerate(want):
            np.testing.assert_allclose(got[f"{prefix}{i}"], np.asarray(v), rtol=1e-6, atol=1e-6)


def test_launch_timeout_and_failure_do_not_hang(tmp_path, capsys):
    start = time.perf_counter()
    rc = multiprocess.launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout_s=1.0)
    assert rc == 124 and time.perf_counter() - start < 15
    rc = multiprocess.launch(
        [sys.executable, "-c", "import os, sys, time; i = int(os.environ['LGRAD_PROCESS_ID']); "
         "print('boom', i); sys.exit(3) if i == 1 else time.sleep(60)"],
        2,
        timeout_s=30,
    )
    assert rc == 3 and time.perf_counter() - start < 25
    assert "process 1 exited with 3" in capsys.readouterr().err


def test_bad_arguments_and_env():
    with pytest.raises(ValueError, match="processes must be a positive integer"):
        multiprocess.launch(["true"], 0)
    with pytest.raises(ValueError, match="no command"):
        multiprocess.launch([], 2)
    assert multiprocess.initialize_from_env({}) is False
    with pytest.raises(ValueError, match="LGRAD_NUM_PROCESSES and LGRAD_PROCESS_ID"):
        multiprocess.initialize_from_env({"LGRAD_COORDINATOR": "127.0.0.1:1"})
    with pytest.raises(ValueError, match="cpu_collectives must be"):
        multiprocess.initialize("127.0.0.1:1", 2, 0, cpu_collectives="nccl")
    with pytest.raises(ValueError, match=r"process_id must lie in \[0, 2\)"):
        multiprocess.initialize("127.0.0.1:1", 2, 5)


def test_cli_launch_requires_command(capsys):
    from lgrad.cli import main

    assert main(["launch", "--processes", "2"]) == 2
    assert "no command given" in capsys.readouterr().err


def test_to_host_single_process():
    x = jnp.arange(4.0)
    assert isinstance(multiprocess.to_host({"a": x})["a"], np.ndarray)
    assert jax.process_count() == 1 and multiprocess.is_main_process()


def test_route_output_only_process_zero_writes(monkeypatch):
    import argparse

    from lgrad.cli._launch_output import route_output

    args = argparse.Namespace(out="results", no_progress=False)
    assert route_output(args).out == "results"  # not under jax.distributed
    monkeypatch.setattr(multiprocess, "_INITIALIZED", True)
    monkeypatch.setattr(multiprocess, "process_index", lambda: 1)
    args = route_output(argparse.Namespace(out="results", no_progress=False))
    assert args.out != "results" and "lgrad-process1-" in args.out and args.no_progress
    monkeypatch.setattr(multiprocess, "process_index", lambda: 0)
    assert route_output(argparse.Namespace(out="results", no_progress=False)).out == "results"
