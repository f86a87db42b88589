"""The experiment engine: claims, configs, the runner's files and the CLI's errors."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad.cli import main
from lgrad.engine import Claim, ConfigError, apply_overrides, discover
from lgrad.train import fit, run_loop


def test_claim_factories_compute_passed():
    assert Claim.at_least("a", "s", 0.99, 0.95).passed is True
    assert Claim.at_least("a", "s", 0.90, 0.95).passed is False
    assert Claim.at_most("a", "s", 2e-7, 1e-6).passed is True
    assert Claim.within("a", "s", -0.295, -0.3, 0.01).passed is True
    assert Claim.within("a", "s", -0.2, -0.3, 0.01).passed is False
    f = Claim.finding("a", "s", {"x": np.float32(1.5)})
    assert f.passed is None and f.measured == {"x": 1.5}
    d = Claim.at_least("a", "s", np.float64(float("nan")), 0.0).to_dict()
    assert d["passed"] is False and d["measured"] == "nan"


def test_overrides_typed():
    cfg = {"steps": 10, "lr": 0.1, "name": "x", "flag": False, "sizes": [1, 2]}
    out = apply_overrides(cfg, {"steps": "20", "lr": "3", "flag": "true", "sizes": "4,5,6"})
    assert out == {"steps": 20, "lr": 3.0, "name": "x", "flag": True, "sizes": [4, 5, 6]}
    assert cfg["steps"] == 10  # not mutated
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        apply_overrides(cfg, {"nope": "1"})
    with pytest.raises(ConfigError, match="type int"):
        apply_overrides(cfg, {"steps": "1.5"})
    with pytest.raises(ConfigError, match="type bool"):
        apply_overrides(cfg, {"flag": "maybe"})
    with pytest.raises(ConfigError):
        apply_overrides(cfg, {"steps": 2.5})


def test_fit_and_run_loop_are_deterministic_and_chunk_invariant():
    loss = lambda p, batch: jnp.sum((p - batch) ** 2)  # noqa: E731
    data = jnp.arange(3.0)
    a = fit(loss, jnp.zeros(3), optax.sgd(0.1), steps=23, data=data, eval_fn=lambda p: {"n": jnp.sum(p)}, eval_every=5)
    b = fit(loss, jnp.zeros(3), optax.sgd(0.1), steps=23, data=data, eval_fn=lambda p: {"n": jnp.sum(p)}, eval_every=5, chunk_size=10)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert a.history["loss"].shape == (23,)
    assert list(a.eval_steps) == [0, 5, 10, 15, 20, 23]
    assert a.evals["n"].shape == (6,)
    np.testing.assert_allclose(a.params, data, atol=2e-2)
    # resuming from a state continues the same trajectory
    first = fit(loss, jnp.zeros(3), optax.sgd(0.1), steps=10, data=data)
    rest = fit(loss, None, optax.sgd(0.1), steps=13, data=data, state=first.state)
    np.testing.assert_array_equal(np.concatenate([first.history["loss"], rest.history["loss"]]), a.history["loss"])


def test_run_loop_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        run_loop(lambda c: (c, {}), 0, steps=-1)
    with pytest.raises(ValueError, match="multiple"):
        run_loop(lambda c: (c, {}), 0, steps=10, eval_fn=lambda c: {}, eval_every=3, chunk_size=4)


@pytest.mark.slow
def test_registry_lists_experiments():
    table = discover()  # the installed `lgrad.experiments` entry point: every reproduction
    assert "diffgrad-synthetic" in table
    for exp in table.values():
        assert exp.paper and set(exp.configs) >= {"quick", "full"}
        assert "seed" in exp.configs["quick"], f"{exp.name}: configs need an explicit seed"
        assert set(exp.smoke) <= set(exp.configs["quick"]), f"{exp.name}: SMOKE has unknown keys"


def test_cli_list(capsys, fixture_experiment):
    assert main(["list"]) == 0
    assert fixture_experiment in capsys.readouterr().out


def test_cli_unknown_experiment(capsys, tmp_path, fixture_experiment):
    assert main(["run", "no-such-name", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-name'" in err and fixture_experiment in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "setting, message",
    [("nope=1", "unknown config key 'nope'"), ("steps=abc", "expected a value of type int"), ("steps", "key=value")],
)
def test_cli_bad_set(capsys, tmp_path, setting, message, fixture_experiment):
    assert main(["run", fixture_experiment, "--set", setting, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_unwritable_out_fails_before_work(capsys, tmp_path, fixture_experiment):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", fixture_experiment, "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
    if os.geteuid() != 0:  # root can write anywhere; the file case above covers it
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["run", fixture_experiment, "--out", str(ro)]) == 2


def test_cli_run_writes_result_files(tmp_path, capsys, fixture_experiment):
    rc = main(["run", fixture_experiment, "--set", "steps=15", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out_dir = tmp_path / fixture_experiment
    result = json.loads((out_dir / "result.json").read_text())
    assert set(result) >= {"name", "paper", "mode", "claims", "runtime_s", "config", "environment"}
    assert result["config"]["steps"] == 15 and result["mode"] == "quick"
    assert set(result["environment"]) >= {"jax", "backend", "device_count"}
    for c in result["claims"]:
        assert set(c) >= {"id", "statement", "measured", "target", "passed"}
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert lines and all("series" in json.loads(x) for x in lines)
    assert list(out_dir.glob("*.png"))
    assert "claims:" in capsys.readouterr().out


def test_cli_reproduce_strict_exit_code(tmp_path, capsys, monkeypatch, fixture_experiment):
    # Shrunk to one step the fixture's claim cannot pass: --strict must say so.
    from lgrad.engine import registry

    exp = registry.get(fixture_experiment)
    monkeypatch.setitem(exp.configs, "quick", {**exp.configs["quick"], "steps": 1})
    args = ["reproduce", "--quick", "--only", fixture_experiment, "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--strict"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "claims:" in out


def test_same_seed_same_numbers(tmp_path, fixture_experiment):
    from lgrad.engine import run_experiment

    a = run_experiment(fixture_experiment, "quick", {"steps": 20}, tmp_path / "a", show_progress=False)
    b = run_experiment(fixture_experiment, "quick", {"steps": 20}, tmp_path / "b", show_progress=False)
    assert [c.to_dict() for c in a.claims] == [c.to_dict() for c in b.claims]


def test_skipped_claim_is_neither_pass_fail_nor_finding():
    from lgrad.engine import Claim

    c = Claim.skipped("backends-agree", "vmap equals mesh", reason="one device; run with JAX_NUM_CPU_DEVICES=8")
    assert c.passed is None and c.is_skipped and c.status == "skip"
    assert not Claim.finding("x", "y", 1.0).is_skipped
    with pytest.raises(ValueError):
        Claim.skipped("x", "y", reason="")
