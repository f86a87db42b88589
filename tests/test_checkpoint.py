"""lgrad.train.checkpoint: kill-and-resume equality, corrupted-checkpoint fallback (one
quiet warning line), refusals."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad.cli import main
from lgrad.engine import run_experiment
from lgrad.train import CheckpointMismatch, Checkpointer, CheckpointSession, LoopCheckpoint, batch_sampler, fit


class Killed(Exception):
    pass


def _problem():
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (64,))
    loss = lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2)  # noqa: E731
    kw = dict(steps=37, batch_fn=batch_sampler((x, y), 8), key=jax.random.PRNGKey(3),
              eval_fn=lambda p: {"norm": jnp.sum(p**2)}, eval_every=5)
    return loss, kw


def _assert_same(a, b):
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])
    for k in a.evals:
        np.testing.assert_array_equal(a.evals[k], b.evals[k])
    np.testing.assert_array_equal(a.eval_steps, b.eval_steps)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        np.testing.assert_array_equal(x, y)


def test_fit_killed_and_resumed_is_bitwise_identical(tmp_path):
    loss, kw = _problem()
    reference = fit(loss, jnp.zeros(3), optax.adam(0.05), **kw)  # no checkpointing at all

    def kill_at_20(carry, steps_done):
        if steps_done >= 20:
            raise Killed

    with pytest.raises(Killed):
        fit(loss, jnp.zeros(3), optax.adam(0.05), **kw, on_chunk=kill_at_20, checkpoint=LoopCheckpoint(tmp_path, every=10))
    ck = LoopCheckpoint(tmp_path, every=10)
    assert ck.ckpt.steps() == [10, 20]
    resumed = fit(loss, jnp.zeros(3), optax.adam(0.05), **kw, checkpoint=ck)
    _assert_same(resumed, reference)
    assert list(resumed.eval_steps) == [0, 5, 10, 15, 20, 25, 30, 35, 37]
    # a finished loop resumed again recomputes nothing and returns the same numbers
    again = fit(loss, jnp.zeros(3), optax.adam(0.05), **kw, checkpoint=LoopCheckpoint(tmp_path, every=10))
    _assert_same(again, reference)


def test_corrupted_latest_checkpoint_falls_back(tmp_path, capsys):
    ck = Checkpointer(tmp_path / "c", fingerprint={"run": 1})
    for step in (1, 2, 3):
        ck.save(step, {"w": np.full(4, float(step)), "step": np.int32(step)}, info={"step": step})
    # truncate every data file of the latest step
    for f in (tmp_path / "c" / "3").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:5])
    step, arrays, info = Checkpointer(tmp_path / "c", fingerprint={"run": 1}).restore()
    assert step == 2 and info == {"step": 2}
    np.testing.assert_array_equal(arrays["w"], np.full(4, 2.0))
    err = capsys.readouterr().err
    assert "checkpoint step 3" in err and "corrupted or truncated" in err and "step 2" in err
    # silent corruption (valid files, different bytes) is caught by the checksum
    rec = tmp_path / "c" / "2" / "record" / "metadata"
    data = json.loads(rec.read_text())
    data["checksum"] = "0" * 64
    rec.write_text(json.dumps(data))
    step, arrays, _ = Checkpointer(tmp_path / "c", fingerprint={"run": 1}).restore()
    assert step == 1 and "checksum mismatch" in capsys.readouterr().err
    with pytest.raises(CheckpointMismatch, match="different run"):
        Checkpointer(tmp_path / "c", fingerprint={"run": 2}).restore()
    # a write killed half-way (orbax's temporary folder) is never used, and is cleaned up
    (tmp_path / "c" / "4.orbax-checkpoint-tmp-123").mkdir()
    assert Checkpointer(tmp_path / "c", fingerprint={"run": 1}).restore()[0] == 1
    assert "step 4" in capsys.readouterr().err and not (tmp_path / "c" / "4.orbax-checkpoint-tmp-123").exists()


def test_typed_prng_keys_round_trip(tmp_path):
    ck = Checkpointer(tmp_path)
    key = jax.random.key(7)
    ck.save(1, {"key": key})
    _, arrays, _ = ck.restore()
    np.testing.assert_array_equal(jax.random.key_data(arrays["key"]), jax.random.key_data(key))
    assert jax.random.uniform(arrays["key"]) == jax.random.uniform(key)


def test_session_refuses_another_config(tmp_path):
    CheckpointSession(tmp_path, every=5, fingerprint={"config": {"lr": 0.1}})
    with pytest.raises(CheckpointMismatch, match="different config.*lr"):
        CheckpointSession(tmp_path, every=5, fingerprint={"config": {"lr": 0.2}}, resume=True)
    with pytest.raises(CheckpointMismatch, match="saved every 5 steps"):
        CheckpointSession(tmp_path, every=7, fingerprint={"config": {"lr": 0.1}}, resume=True)
    with pytest.raises(ValueError, match="every"):
        LoopCheckpoint(tmp_path / "x", every=0)


def test_truncated_step_gives_one_quiet_warning_line(tmp_path, capfd):
    """A fit resumed over a fully truncated latest step: exactly one line on stderr (no
    absl JSON errors, no asyncio tracebacks), and the same numbers as a clean run."""
    loss, kw = _problem()
    reference = fit(loss, jnp.zeros(3), optax.adam(0.05), **kw, checkpoint=False)
    fit(loss, jnp.zeros(3), optax.adam(0.05), **kw, checkpoint=LoopCheckpoint(tmp_path, every=10))
    latest = max(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    for f in (tmp_path / str(latest)).rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:5])
    capfd.readouterr()
    resumed = fit(loss, jnp.zeros(3), optax.adam(0.05), **kw, checkpoint=LoopCheckpoint(tmp_path, every=10))
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lgrad: warning: checkpoint step 37") and "corrupted or truncated" in err[0]
    _assert_same(resumed, reference)


@pytest.mark.slow
def test_run_resume_after_kill_gives_the_same_files(tmp_path, monkeypatch, fixture_experiment):
    """``lgrad run --resume``: every loop of the experiment checkpoints through the
    context's session; a run killed mid-way finishes with identical numbers."""
    name = fixture_experiment
    over = {"steps": 30}
    ref = run_experiment(name, "quick", over, tmp_path / "ref", show_progress=False, checkpoint_every=10)
    saves = {"n": 0}
    original = LoopCheckpoint.save

    def dying_save(self, *a, **k):
        original(self, *a, **k)
        saves["n"] += 1
        if saves["n"] == 8:  # inside the third loop (3 saves per loop)
            raise Killed

    monkeypatch.setattr(LoopCheckpoint, "save", dying_save)
    with pytest.raises(Killed):
        run_experiment(name, "quick", over, tmp_path / "run", show_progress=False, checkpoint_every=10)
    monkeypatch.setattr(LoopCheckpoint, "save", original)
    ckdir = tmp_path / "run" / name / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("loop-*")) == ["loop-000", "loop-001", "loop-002"]
    # resuming with another config is refused in one line, before any work
    rc = main(["run", name, "--set", "steps=31", "--resume", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    res = run_experiment(name, "quick", over, tmp_path / "run", show_progress=False, resume=True)
    assert [c.to_dict() for c in res.claims] == [c.to_dict() for c in ref.claims]
    a = (tmp_path / "ref" / name / "metrics.jsonl").read_text()
    b = (tmp_path / "run" / name / "metrics.jsonl").read_text()
    assert a == b
    assert not ckdir.exists()  # removed once the run completed


def test_cli_resume_mismatch_is_one_line(tmp_path, capsys, fixture_experiment):
    name = fixture_experiment
    root = tmp_path / name / "checkpoints"
    CheckpointSession(root, every=10, fingerprint={"experiment": name, "mode": "quick", "config": {"steps": 1}})
    rc = main(["run", name, "--resume", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "different config" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
