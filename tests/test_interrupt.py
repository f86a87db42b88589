"""Ctrl-C / SIGTERM: the command stops within seconds with exit status 130, says what
was interrupted, and the previous results stay byte-identical."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lgrad.cli import main
from lgrad.cli.interrupt import Interrupts

ROOT = Path(__file__).resolve().parents[1]
EXP = "diffgrad-synthetic"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _previous(out: Path) -> Path:
    run = out / EXP
    (run / "sweep").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"name": EXP, "claims": []}) + "\n")
    (run / "metrics.jsonl").write_text('{"series": "loss", "step": 0}\n')
    (run / "trajectories.png").write_bytes(bytes(range(256)))
    (run / "sweep" / "sweep.csv").write_text("cell,strategy\nabc,sequential\n")
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _interrupt_run(tmp_path: Path, sig: int) -> None:
    out = _previous(tmp_path / "results")
    before = snapshot(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lgrad.cli", "run", EXP, "--set", "steps=20000", "--out", str(out), "--no-progress"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        started = _wait_for(lambda: any(p.name.startswith(f".{EXP}.partial-") for p in out.iterdir()), 120)
        assert started, "the run never started writing"
        time.sleep(1.0)  # mid-run: compiling or running chunks
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert took < 15, f"took {took:.1f} s to stop"
    assert "Traceback" not in err
    assert f"interrupted: {EXP} did not finish" in err.strip().splitlines()[-1]
    assert snapshot(out) == before  # byte-identical, no partial folder left
    assert sorted(p.name for p in out.iterdir()) == [EXP]


def test_sigint_mid_run_keeps_the_previous_results(tmp_path):
    _interrupt_run(tmp_path, signal.SIGINT)


@pytest.mark.slow
def test_sigterm_mid_run_keeps_the_previous_results(tmp_path):
    _interrupt_run(tmp_path, signal.SIGTERM)


@pytest.mark.slow
def test_a_long_compiled_chunk_is_cut_short(tmp_path):
    """Python cannot raise KeyboardInterrupt while the main thread waits inside some XLA
    calls (here ``float`` of an array still being computed): the watchdog ends the
    process after the grace period, printing what ``on_force`` reports."""
    script = textwrap.dedent(
        """
        import sys, jax, jax.numpy as jnp
        from lgrad.cli.interrupt import Interrupts
        f = jax.jit(lambda x: jax.lax.fori_loop(0, 10**6, lambda i, x: jnp.sin(x @ x), x))
        x = jnp.ones((64, 64))
        f.lower(x).compile()
        with Interrupts(on_force=lambda: print("table of what finished", file=sys.stderr), grace=1.0):
            print("computing", flush=True)
            float(f(x)[0, 0])
        print("finished")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "computing"
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "table of what finished" in err and "finished" not in out.replace("table of what finished", "")
    assert took < 8, f"took {took:.1f} s to stop"


@pytest.mark.slow
def test_reproduce_prints_what_finished(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lgrad.cli", "reproduce", "--only", "one-byte-zo", "--only", "attention-svm", "--out", str(out), "--no-progress"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert _wait_for(lambda: (out / "one-byte-zo" / "result.json").exists(), 240), "the first experiment never finished"
        assert _wait_for(lambda: any(p.name.startswith(".attention-svm.partial-") for p in out.iterdir()), 60)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "one-byte-zo" in stdout and "attention-svm" not in stdout  # the table of what finished
    assert "interrupted: attention-svm did not finish" in err and "(1 of 2 experiments finished)" in err
    assert sorted(p.name for p in out.iterdir()) == ["one-byte-zo"]


def test_interrupts_turn_signals_into_keyboard_interrupt():
    forced = []
    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with Interrupts(on_force=lambda: forced.append(1)):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(200):
                time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is old and forced == []


def test_interrupted_sweep_keeps_the_previous_sweep_and_resumes(tmp_path, monkeypatch, capfd):
    import lgrad.sweep.runner as sweep_runner
    from lgrad.engine import discover
    from lgrad.sweep.batched import RunInfo

    monkeypatch.setattr(discover()[EXP].module, "sweep_claims", lambda config, metrics: [])
    out = _previous(tmp_path / "results")
    before = snapshot(out)

    def dying(fn, hps, seeds, on_done=None, **k):
        on_done([0], [{"diffgrad_gap": 0.5, "final_loss": 1.0}], "sequential")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_runner, "run_cells", dying)
    argv = ["sweep", EXP, "--set", "steps=12", "--set", "n_starts=3", "--grid", "learning_rate=0.1,0.2", "--out", str(out), "--no-progress"]
    assert main(argv) == 130
    err = capfd.readouterr().err
    assert "1 finished cell(s) are kept in" in err and ".sweep.partial" in err and "--resume" in err
    after = snapshot(out)
    assert {k: v for k, v in after.items() if ".sweep.partial" not in k} == before  # sweep/ untouched

    calls = []

    def rest(fn, hps, seeds, on_done=None, **k):
        calls.append(len(hps))
        metrics = [{"diffgrad_gap": 0.25, "final_loss": 1.0} for _ in hps]
        on_done(list(range(len(hps))), metrics, "sequential")
        return metrics, RunInfo("sequential")

    monkeypatch.setattr(sweep_runner, "run_cells", rest)
    assert main([*argv, "--resume"]) == 0
    assert calls == [1]  # only the cell the interrupted sweep had not finished
    assert not (out / EXP / ".sweep.partial").exists()
    assert len(list((out / EXP / "sweep" / "cells").glob("*.json"))) == 2
