"""lgrad.sweep: specs, refusals, vmapped == one-by-one, resume, process slices."""
from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.cli import main
from lgrad.engine import ConfigError, get_experiment
from lgrad.sweep import SweepSpec, process_slice, run_cells, run_sweep
from lgrad.sweep import runner as sweep_runner

class Killed(Exception):
    pass


BASE = {"seed": 3, "lr": 0.1, "steps": 10, "name": "a", "flag": False}


def test_spec_cells_grid_random_seeds():
    spec = SweepSpec(grid={"lr": ["1e-3", "1e-2"], "steps": [5, 10]}, seeds=3)
    cells = spec.cells(BASE)
    assert len(cells) == 12 and len({c.id for c in cells}) == 12
    assert [c.seed for c in cells[:3]] == [3, 4, 5]
    assert cells[0].config == {**BASE, "lr": 1e-3, "steps": 5, "seed": 3}
    assert isinstance(cells[0].config["lr"], float) and spec.grid_axes == ["lr", "steps"]
    rnd = SweepSpec(random={"lr": ("loguniform", 1e-4, 1e-1), "steps": ("int", 1, 4)}, samples=5, random_seed=1).cells(BASE)
    assert len(rnd) == 5 and all(1e-4 <= c.config["lr"] <= 1e-1 and 1 <= c.config["steps"] <= 4 for c in rnd)
    assert [c.config for c in rnd] == [c.config for c in SweepSpec(random={"lr": ("loguniform", 1e-4, 1e-1), "steps": ("int", 1, 4)}, samples=5, random_seed=1).cells(BASE)]
    listed = SweepSpec(configs=[{"lr": 0.5}, {"name": "b", "flag": True}]).cells(BASE)
    assert [c.overrides for c in listed] == [{"lr": 0.5}, {"name": "b", "flag": True}]


@pytest.mark.parametrize(
    "spec, message",
    [
        (SweepSpec(grid={"nope": [1]}), "unknown config key 'nope'"),
        (SweepSpec(grid={"lr": []}), "empty list"),
        (SweepSpec(grid={"steps": ["1.5"]}), "expected a value of type int"),
        (SweepSpec(grid={"flag": [2]}), "expected bool"),
        (SweepSpec(grid={"lr": [0.1, 0.1]}), "repeated"),
        (SweepSpec(seeds=0), "--seeds"),
        (SweepSpec(grid={"seed": [1, 2]}, seeds=2), "--seeds cannot be combined"),
        (SweepSpec(random={"lr": ("loguniform", 0.0, 1.0)}, samples=2), "LOW > 0"),
        (SweepSpec(random={"lr": ("uniform", 0.0, 1.0)}), "--samples"),
        (SweepSpec(random={"name": ("uniform", 0.0, 1.0)}, samples=2), "numeric"),
        (SweepSpec(configs=[{"lr": "x"}]), "type float"),
    ],
)
def test_spec_refuses_bad_input(spec, message):
    with pytest.raises(ConfigError, match=message):
        spec.cells(BASE)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "nope=1"], "unknown config key 'nope'"),
        (["--grid", "learning_rate="], "empty list of values"),
        (["--grid", "steps=1.5"], "expected a value of type int"),
        (["--grid", "b1=0.9", "--strategy", "fast"], "--strategy"),
        (["--grid", "b1=0.9", "--metric", "nope"], "not among"),
        (["--random", "learning_rate=normal:0:1", "--samples", "2"], "unknown distribution"),
        ([], "nothing to sweep"),
        (["no-such-experiment-name"], "unknown experiment"),
    ],
)
def test_cli_refuses_in_one_line(tmp_path, capsys, args, message):
    name = [] if args[:1] == ["no-such-experiment-name"] else ["diffgrad-synthetic"]
    assert main(["sweep", *name, *args, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "diffgrad-synthetic" / "sweep" / "cells").exists()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), count=st.integers(1, 9))
def test_process_slices_cover_every_cell_exactly_once(n, count):
    cells = list(range(n))
    taken = [c for i in range(count) for c in process_slice(cells, i, count)]
    assert sorted(taken) == cells
    sizes = [len(process_slice(cells, i, count)) for i in range(count)]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        process_slice(cells, count, count)


def _quadratic_cell(hp, key):
    target = jax.random.normal(key, (4,))
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=hp["lr"], b1=hp["b1"])

    def step(c, _):
        p, s = c
        g = jax.grad(lambda q: jnp.sum((q - target) ** 2))(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (jnp.zeros(4), tx.init(jnp.zeros(4))), None, length=25)
    return {"dist": jnp.sum((p - target) ** 2), "p0": p[0]}


def test_run_cells_vmap_sharded_equals_sequential():
    hps = [{"lr": lr, "b1": b1} for lr in (0.01, 0.1, 0.3) for b1 in (0.5, 0.9)] + [{"lr": 0.05, "b1": 0.7}]
    seeds = list(range(len(hps)))
    seq, info_s = run_cells(_quadratic_cell, hps, seeds, strategy="sequential")
    done = []
    vm, info_v = run_cells(_quadratic_cell, hps, seeds, strategy="vmap", batch_size=4, on_done=lambda i, m: done.extend(i))
    assert info_s.strategy == "sequential" and info_v.strategy == "vmap"
    assert info_v.batch_size == 4 and info_v.devices == 4  # 7 cells: batches of 4 over 4 of the 8 devices, last one padded
    assert sorted(done) == seeds
    for a, b in zip(seq, vm):
        np.testing.assert_allclose([a["dist"], a["p0"]], [b["dist"], b["p0"]], rtol=1e-6, atol=1e-7)
    auto, info_a = run_cells(_quadratic_cell, hps, seeds, strategy="auto")
    assert info_a.strategy in ("vmap", "sequential") and "decision" in info_a.calibration
    for a, b in zip(seq, auto):
        np.testing.assert_allclose(a["dist"], b["dist"], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="strategy"):
        run_cells(_quadratic_cell, hps, seeds, strategy="fast")


def test_auto_probe_branch_keeps_every_result(monkeypatch):
    """Force auto's vmap probe (on a loaded CPU the compile guard usually says
    sequential): whichever way it decides, every cell is computed once and right."""
    from lgrad.sweep import batched

    monkeypatch.setattr(batched, "PROBE_MAX_COMPILE_FRACTION", 1e9)
    hps = [{"lr": 0.01 * (i + 1), "b1": 0.9} for i in range(19)]
    seeds = list(range(19))
    seen = []
    auto, info = run_cells(_quadratic_cell, hps, seeds, strategy="auto", on_done=lambda i, m: seen.extend(i))
    assert sorted(seen) == seeds and info.calibration["probe_batch"] == 8  # ceil(17/16) rounded up to the 8 devices
    assert info.calibration["decision"].startswith(("vmap", "sequential: vmap was not faster"))
    seq, _ = run_cells(_quadratic_cell, hps, seeds, strategy="sequential")
    for a, b in zip(seq, auto):
        np.testing.assert_allclose(a["dist"], b["dist"], rtol=1e-6, atol=1e-7)


def test_diffgrad_sweep_vmapped_equals_one_by_one(tmp_path):
    """The real opt-in experiment: a 2x2 grid vmapped over the device mesh equals the
    same configurations run one by one, and the outputs are written."""
    spec = SweepSpec(grid={"learning_rate": [0.05, 0.1], "b1": [0.9, 0.95]})
    sets = {"steps": 40, "n_starts": 3}
    a = run_sweep("diffgrad-synthetic", spec, sets=sets, out=tmp_path / "v", strategy="vmap", show_progress=False, log=lambda s: None)
    b = run_sweep("diffgrad-synthetic", spec, sets=sets, out=tmp_path / "s", strategy="sequential", show_progress=False, log=lambda s: None)
    assert a.groups[0]["strategy"] == "vmap" and a.groups[0]["devices"] == 4
    assert len(a.records) == len(b.records) == 4
    for ra, rb in zip(a.records, b.records):
        assert ra["config"] == rb["config"] and ra["claims"].keys() == rb["claims"].keys()
        for k in ra["metrics"]:
            np.testing.assert_allclose(ra["metrics"][k], rb["metrics"][k], rtol=1e-12, atol=1e-14, err_msg=k)
    # a cell (inject_hyperparams, traced settings) equals the experiment's own fit path
    from experiments.diffgrad_synthetic import f1
    from lgrad.train import fit
    from lgrad.optim import diffgrad

    paper = next(r for r in b.records if r["overrides"] == {"learning_rate": 0.1, "b1": 0.95})
    with jax.enable_x64(True):
        res = fit(lambda p, _: f1(p), jnp.asarray(-1.0, jnp.float64), diffgrad(0.1, b1=0.95, b2=0.999, eps=1e-8), steps=40)
    np.testing.assert_allclose(paper["metrics"]["F1/diffGrad"], float(res.params), rtol=1e-12)
    out = a.out_dir
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 4 and {"learning_rate", "b1", "diffgrad_gap", "passed:F1-diffgrad-global"} <= set(rows[0])
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "diffgrad_gap" and best["direction"] == "min"
    gaps = [r["metrics"]["diffgrad_gap"] for r in a.records]
    assert best["best"]["mean"] == min(gaps)
    assert (out / "heatmap.png").stat().st_size > 1000


def _tiny_cell(static, hp, key):
    x = jnp.asarray(hp["x0"])
    for _ in range(static["steps"] // 10):
        x = x - hp["learning_rate"] * 2 * (x - 1.0)
    return {"diffgrad_gap": jnp.abs(x - 1.0), "noise": jax.random.uniform(key)}


def test_sweep_groups_static_keys_and_resumes_after_kill(tmp_path, monkeypatch):
    """Keys that change shapes/control flow (steps) split the sweep into compiled
    groups; a sweep killed after some cells skips them when resumed and ends with
    the same table; resuming with another spec is refused."""
    mod = get_experiment("diffgrad-synthetic").module
    monkeypatch.setattr(mod, "train_cell", _tiny_cell)
    monkeypatch.setattr(mod, "sweep_claims", lambda config, m: [])
    spec = SweepSpec(grid={"steps": [10, 20], "learning_rate": [0.1, 0.2, 0.3]}, seeds=2)
    kw = dict(out=tmp_path, strategy="sequential", show_progress=False, log=lambda s: None)
    full = run_sweep("diffgrad-synthetic", spec, **kw)
    assert len(full.groups) == 2 and [g["cells"] for g in full.groups] == [6, 6]
    table = (full.out_dir / "sweep.jsonl").read_text()

    real = sweep_runner.run_cells
    calls = {"n": 0}

    def dying(fn, hps, seeds, on_done=None, **k):
        def hook(idx, metrics):
            on_done(idx, metrics)
            calls["n"] += len(idx)
            if calls["n"] >= 8:
                raise Killed

        return real(fn, hps, seeds, on_done=hook, **k)

    monkeypatch.setattr(sweep_runner, "run_cells", dying)
    with pytest.raises(Killed):
        run_sweep("diffgrad-synthetic", spec, **kw)
    monkeypatch.setattr(sweep_runner, "run_cells", real)
    # an interrupted sweep keeps its cells in the partial folder that --resume continues
    assert len(list((full.out_dir.parent / ".sweep.partial" / "cells").glob("*.json"))) == 8
    resumed = run_sweep("diffgrad-synthetic", spec, resume=True, **kw)
    assert resumed.skipped == 8 and sum(g["cells"] for g in resumed.groups) == 4
    assert (full.out_dir / "sweep.jsonl").read_text() == table
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep("diffgrad-synthetic", SweepSpec(grid={"steps": [10, 30]}), resume=True, **kw)


def test_processes_each_run_their_slice_and_process_0_writes_the_table(tmp_path, monkeypatch):
    mod = get_experiment("diffgrad-synthetic").module
    monkeypatch.setattr(mod, "train_cell", _tiny_cell)
    monkeypatch.setattr(mod, "sweep_claims", lambda config, m: [])
    spec = SweepSpec(grid={"learning_rate": [0.1, 0.2, 0.3], "x0": [0.0, 2.0]}, seeds=2)
    kw = dict(out=tmp_path, strategy="vmap", show_progress=False, log=lambda s: None, process_count=3)
    ran = []
    for pi in (2, 1, 0):  # process 0 last: it writes the table once every cell file exists
        r = run_sweep("diffgrad-synthetic", spec, process_index=pi, resume=pi == 0, **kw)  # 0 must not clear the others' cells
        ran.append(sum(g["cells"] for g in r.groups))
        assert r.skipped == 0
    assert ran == [4, 4, 4]
    rows = [json.loads(x) for x in (r.out_dir / "sweep.jsonl").read_text().splitlines()]
    assert sorted(x["index"] for x in rows) == list(range(12))


def test_experiments_without_train_cell_are_swept_by_full_runs(tmp_path, monkeypatch):
    mod = get_experiment("diffgrad-synthetic").module
    monkeypatch.delattr(mod, "train_cell")
    with pytest.raises(ConfigError, match="only be swept sequentially"):
        run_sweep("diffgrad-synthetic", SweepSpec(grid={"steps": [5]}), out=tmp_path, strategy="vmap")
    spec = SweepSpec(grid={"learning_rate": [0.1]})  # one full run keeps the test short
    r = run_sweep("diffgrad-synthetic", spec, sets={"steps": 8, "n_starts": 2}, out=tmp_path, show_progress=False, log=lambda s: None)
    assert [x["strategy"] for x in r.records] == ["run_experiment"]
    rec = r.records[0]
    assert rec["config"]["n_starts"] == 2 and "claims_passed" in rec["metrics"] and "claim:numpy-reference" in rec["metrics"]
    assert rec["claims"]["numpy-reference"]["passed"] is True
    run_cfg = json.loads((r.out_dir / "runs" / rec["cell"] / "diffgrad-synthetic" / "config.json").read_text())
    assert run_cfg["steps"] == 8 and run_cfg["learning_rate"] == 0.1
    assert r.best["metric"] == "claims_passed"
