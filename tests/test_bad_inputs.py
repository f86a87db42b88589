"""Every bad input is refused before compute: exit status 2, one line on stderr naming
the problem, no traceback, and the output folder's previous contents byte-identical.

The CLI runs in-process (``lgrad.cli.main``) against a results folder holding what a
finished ``diffgrad-synthetic`` run, a finished sweep and a bench leave behind; every
case must leave it untouched. A hypothesis test feeds out-of-range and wrong-type ``--set`` values to
every key of every experiment's config.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lgrad.cli import main
from lgrad.engine import config as config_module
from lgrad.engine import discover
from lgrad.engine.config import Bool, Choice, ConfigError, Float, Int, limits_for, validate_config

EXP = "diffgrad-synthetic"
SMOKE = ["--set", "steps=12", "--set", "n_starts=3"]  # the experiment's SMOKE (a seconds-long run)
MEMORY = 8 * 10**9  # the memory guard sees 8 GB, whatever this machine has


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _previous_results(out: Path) -> Path:
    """What a finished run, a finished sweep and a bench leave behind (the bytes only
    need to survive; no bad input may reach compute, so none is computed here)."""
    run = out / EXP
    (run / "sweep" / "cells").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"name": EXP, "claims": []}) + "\n")
    (run / "config.json").write_text(json.dumps({"mode": "quick", "steps": 12}) + "\n")
    (run / "metrics.jsonl").write_text('{"series": "loss", "step": 0, "value": 1.0}\n')
    (run / "trajectories.png").write_bytes(bytes(range(256)) * 4)
    (run / "sweep" / "sweep.csv").write_text("cell,index,seed,learning_rate,strategy\nabc,0,0,0.1,sequential\n")
    (run / "sweep" / "cells" / "abc.json").write_text("{}\n")
    (out / "bench.json").write_text(json.dumps({"quick": True, "entries": [], "errors": {}}) + "\n")
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return _previous_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(autouse=True)
def fixed_memory(monkeypatch):
    monkeypatch.setattr(config_module, "available_memory", lambda: MEMORY)


def _bad(argv: list[str], must_name: str, results: Path, capfd) -> str:
    before = snapshot(results)
    capfd.readouterr()
    status = main(argv)
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, (argv, status, captured.err)
    assert len(lines) == 1, (argv, captured.err)
    assert lines[0].startswith("lgrad: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert must_name in lines[0], (must_name, lines[0])
    assert snapshot(results) == before, f"{argv} changed the results folder"
    return lines[0]


RUN = lambda *a: ["run", EXP, *a]  # noqa: E731
SWEEP = lambda *a: ["sweep", EXP, *SMOKE, *a]  # noqa: E731

# (argv without --out, text the error line must contain)
CASES = [
    # lgrad run --set: the cases
    (RUN("--set", "steps=-5"), "steps=-5"),
    (RUN("--set", "steps=0"), "steps=0"),
    (RUN("--set", "learning_rate=nan"), "learning_rate=nan"),
    (RUN("--set", "learning_rate=inf"), "learning_rate=inf"),
    (RUN("--set", "learning_rate=-0.1"), "learning_rate=-0.1"),
    (RUN("--set", "b1=1.5"), "b1=1.5"),
    (RUN("--set", "n_starts=-3"), "n_starts=-3"),
    (RUN("--set", "steps=10000000000"), "steps=10000000000"),
    (RUN("--set", "n_starts=100000000"), "n_starts=100000000"),
    (RUN("--set", "steps=200000000"), "GB"),  # in range, but the estimate exceeds memory
    (["run", "dsgd-topology", "--set", "backend=foo"], "backend=foo"),
    # more ranges and types
    (RUN("--set", "learning_rate=-inf"), "learning_rate=-inf"),
    (RUN("--set", "b2=1"), "b2=1.0"),
    (RUN("--set", "eps=0"), "eps=0.0"),
    (RUN("--set", "seed=-1"), "seed=-1"),
    (RUN("--set", "steps=1.5"), "steps=1.5"),
    (RUN("--set", "b1=abc"), "b1=abc"),
    (RUN("--set", "x0=nan"), "x0=nan"),
    (RUN("--set", "nope=1"), "nope"),
    (RUN("--set", "steps"), "steps"),
    (RUN("--checkpoint-every", "-1"), "checkpoint-every"),
    (RUN("--checkpoint-every", "abc"), "checkpoint-every"),
    (RUN("--quick", "--full"), "--full"),
    (["run", "no-such-experiment"], "no-such-experiment"),
    (["run"], "name"),
    (["frobnicate"], "frobnicate"),
    (["run", "unlearning-paths", "--set", "unlearn_methods=ga,xx"], "unlearn_methods"),
    (["run", "local-tpsgd-drtp", "--set", "rules=backprop,nope"], "rules"),
    (["run", "attention-svm", "--set", "check_fro_at=15"], "check_fro_at=15"),
    (["run", "hessian-spectrum", "--set", "widths=100000"], "widths=[100000]"),
    # lgrad sweep: every cell is checked
    (SWEEP("--grid", "learning_rate=-1,nan,0.1"), "learning_rate=-1"),
    (SWEEP("--grid", "learning_rate=0.1,nan"), "learning_rate=nan"),
    (SWEEP("--grid", "steps=0,10"), "steps=0"),
    (SWEEP("--grid", "b1=0.5,1.5"), "b1=1.5"),
    (SWEEP("--grid", "n_starts=3,100000000"), "n_starts=100000000"),
    (SWEEP("--strategy", "foo", "--grid", "b1=0.5,0.9"), "foo"),
    (SWEEP("--random", "learning_rate=uniform:-1:1", "--samples", "4"), "learning_rate=-"),
    (SWEEP("--random", "learning_rate=uniform:nan:1", "--samples", "2"), "learning_rate"),
    (SWEEP("--random", "learning_rate=loguniform:0:1", "--samples", "2"), "loguniform"),
    (SWEEP("--configs", '[{"learning_rate": -1}]'), "learning_rate=-1"),
    (SWEEP("--seeds", "0"), "--seeds"),
    (SWEEP("--seeds", "1000000"), "1000000"),
    (SWEEP("--grid", "nope=1,2"), "nope"),
    (SWEEP("--grid", "learning_rate="), "learning_rate"),
    (SWEEP("--batch-size", "0", "--grid", "learning_rate=0.1,0.2"), "--batch-size"),
    (SWEEP("--set", "steps=-1", "--grid", "learning_rate=0.1,0.2"), "steps=-1"),
    # reproduce, bench, launch
    (["reproduce", "--only", "no-such-experiment"], "no-such-experiment"),
    (["bench", "--only", "no-such-topic"], "no-such-topic"),
    (["launch", "--processes", "2"], "no command"),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("argv,must_name", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_refused_in_one_line(argv, must_name, results, capfd):
    _bad([*argv, "--out", str(results)] if argv and argv[0] in ("run", "sweep", "reproduce", "bench") and len(argv) > 1 else argv,
         must_name, results, capfd)


def test_unwritable_out_is_refused(results, capfd):
    blocker = results / "bench.json"  # a file, not a folder
    _bad(["run", EXP, *SMOKE, "--out", str(blocker)], "not writable", results, capfd)


def _stub(monkeypatch, run):
    """Replace the experiment's ``measure`` (and ``claims``) in the registry's cached
    table by ``run(config, ctx) -> list[Claim]``: its claims travel in the measurements."""
    import dataclasses

    from lgrad.engine import Claim

    def measure(config, ctx):
        return {"claims": [c.to_dict() for c in run(config, ctx)]}

    def claims(m, config):
        return [Claim(**c) for c in m["claims"]]

    table = discover()
    monkeypatch.setitem(table, EXP, dataclasses.replace(table[EXP], measure=measure, claims=claims))


def test_a_finished_run_replaces_the_folder_and_keeps_the_sweep(tmp_path, monkeypatch, capfd):
    from lgrad.engine import Claim

    out = _previous_results(tmp_path / "r")

    def fake(config, ctx):
        ctx.log("loss", step=0, value=config["learning_rate"])
        (ctx.out_dir / "new.png").write_bytes(b"new plot")
        return [Claim.finding("lr", "the learning rate", config["learning_rate"])]

    _stub(monkeypatch, fake)
    assert main(["run", EXP, "--set", "learning_rate=0.2", "--out", str(out), "--no-progress"]) == 0
    names = {p.name for p in (out / EXP).iterdir()}
    assert names == {"config.json", "metrics.jsonl", "result.json", "new.png", "sweep"}  # old plot gone, sweep kept
    assert json.loads((out / EXP / "config.json").read_text())["learning_rate"] == 0.2
    assert (out / EXP / "sweep" / "sweep.csv").read_text().startswith("cell,")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.mark.slow
def test_real_run_and_sweep_outputs(tmp_path):
    out = tmp_path / "r"
    assert main(["run", EXP, *SMOKE, "--out", str(out), "--no-progress"]) == 0
    assert {"result.json", "metrics.jsonl", "config.json", "trajectories.png"} <= {p.name for p in (out / EXP).iterdir()}
    assert main(["sweep", EXP, *SMOKE, "--grid", "learning_rate=0.1,0.2", "--out", str(out), "--no-progress"]) == 0
    rows = (out / EXP / "sweep" / "sweep.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert first[header.index("strategy")] in ("sequential", "vmap")  # what actually ran
    assert (out / EXP / "sweep" / "sweep.json").exists() and not (out / EXP / ".sweep.partial").exists()


def test_a_crashing_run_leaves_the_previous_results(tmp_path, monkeypatch):
    out = _previous_results(tmp_path / "r")
    before = snapshot(out)

    def boom(config, ctx):
        ctx.log("series", step=0, x=1.0)
        (ctx.out_dir / "half.png").write_bytes(b"partial")
        raise RuntimeError("simulated crash")

    _stub(monkeypatch, boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["run", EXP, *SMOKE, "--out", str(out), "--no-progress"])
    assert snapshot(out) == before  # byte-identical; the partial folder is removed


def test_make_program_rejects_unknown_backends():
    from lgrad.distributed import make_program

    with pytest.raises(ValueError, match="unknown backend 'vmpa'"):
        make_program(lambda x: x, n_workers=2, backend="vmpa", in_axes=(0,))


def test_limit_specs():
    assert Int(min=1).ok(1) and not Int(min=1).ok(0) and not Int().ok(True) and not Int().ok(1.0)
    assert Float(gt=0).ok(1e-9) and not Float(gt=0).ok(0.0) and not Float().ok(float("nan")) and not Float().ok(float("inf"))
    assert Float(min=0, lt=1).ok(0) and not Float(min=0, lt=1).ok(1)
    assert Choice("vmap", "mesh").ok("mesh") and not Choice("vmap", "mesh").ok("vmpa")
    assert Bool().ok(False) and not Bool().ok(0)
    assert isinstance(limits_for("n_workers"), Int) and isinstance(limits_for("learning_rate"), Float)
    assert limits_for("steps", {"steps": Int(max=5)}).max == 5  # an experiment's own limit wins
    with pytest.raises(ConfigError, match=r"--set alphas=\[1.0, -2.0\]: expected every element a finite number > 0"):
        validate_config({"alphas": [1.0, -2.0]}, {"alphas": Float(gt=0)}, source="--set")
    with pytest.raises(ConfigError, match=r"n=4: its arrays need about 32 B .* more than the 16 B"):
        validate_config({"n": 4}, estimate=lambda c: 8 * c["n"], changed={"n": 4}, available=16)
    with pytest.raises(ConfigError, match="LIMITS names 'nope'"):
        validate_config({"a": 1}, {"nope": Int()})


def test_every_default_config_is_valid(monkeypatch):
    """quick and SMOKE fit in 8 GB; full configs (accelerator-sized) only meet their limits."""
    from lgrad.engine.runner import experiment_config

    for exp in discover().values():
        experiment_config(exp, "quick")
        experiment_config(exp, "quick", exp.smoke)
    monkeypatch.setattr(config_module, "available_memory", lambda: None)
    for exp in discover().values():
        experiment_config(exp, "full")


# ----------------------------------------------------------------------------- hypothesis

def _invalid_texts(limit, default) -> st.SearchStrategy[str]:
    """Values that are certainly refused for a key with this limit and default."""
    wrong = ["abc", "", "1.5e", "[", "{}"]
    if isinstance(default, bool):
        return st.sampled_from(["maybe", "2", "abc", "-1"])
    if isinstance(default, int):
        out = [st.sampled_from([*wrong, "1.5", "nan", "inf", "1e3"])]
        if isinstance(limit, Int) and limit.min is not None:
            out.append(st.integers(max_value=limit.min - 1, min_value=limit.min - 10**12).map(str))
        if isinstance(limit, Int) and limit.max is not None:
            out.append(st.integers(min_value=limit.max + 1, max_value=limit.max + 10**12).map(str))
        return st.one_of(*out)
    if isinstance(default, float):
        out = [st.sampled_from([*wrong, "nan", "inf", "-inf", "NaN"])]
        if isinstance(limit, Float):
            lo = limit.gt if limit.gt is not None else limit.min
            if lo is not None:
                top = lo if limit.gt is not None else lo - 1e-9
                out.append(st.floats(max_value=top, min_value=top - 1e6, allow_nan=False).map(repr))
            hi = limit.lt if limit.lt is not None else limit.max
            if hi is not None:
                bottom = hi if limit.lt is not None else hi + 1e-9
                out.append(st.floats(min_value=bottom, max_value=bottom + 1e6, allow_nan=False).map(repr))
        return st.one_of(*out)
    if isinstance(default, str) and isinstance(limit, Choice):
        return st.text(min_size=1, max_size=8).filter(lambda t: t not in limit.values and "\n" not in t)
    if isinstance(default, list) and default and isinstance(default[0], (int, float)) and not isinstance(default[0], bool):
        return _invalid_texts(limit, default[0]).filter(lambda t: t.strip() not in ("", "[]"))  # [] is a valid list
    return st.nothing()


def _cases():
    out = []
    for name, exp in discover().items():
        limits = getattr(exp.module, "LIMITS", None)
        for key, default in exp.config("quick").items():
            if isinstance(default, (bool, int, float)) or (isinstance(default, str) and isinstance(limits_for(key, limits), Choice)) or (
                isinstance(default, list) and default and isinstance(default[0], (int, float)) and not isinstance(default[0], bool)
            ):
                out.append((name, key))
    return out


CASES_H = _cases()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_bad_set_values_are_refused_before_compute(data, tmp_path, capfd):
    import tempfile

    name, key = data.draw(st.sampled_from(CASES_H), label="experiment, key")
    exp = discover()[name]
    default = exp.config("quick")[key]
    value = data.draw(_invalid_texts(limits_for(key, getattr(exp.module, "LIMITS", None)), default), label="value")
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "out"
    capfd.readouterr()
    status = main(["run", name, "--set", f"{key}={value}", "--out", str(out)])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(err) == 1 and key in err[0] and "Traceback" not in err[0], (name, key, value, err)
    assert not out.exists() or not any(out.iterdir())
