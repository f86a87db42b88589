"""`lgrad bench` smoke test (benchmarks are not tests: only the plumbing is checked)."""
from __future__ import annotations

import json

from lgrad.bench import Entry
from lgrad.bench.runner import available
from lgrad.cli import main


def test_entry_ratio_and_target():
    e = Entry("x", "what", 1.2, 1.0, "s", max_ratio=1.35)
    assert abs(e.ratio - 1.2) < 1e-12 and e.met is True and e.target == "ratio <= 1.35"
    assert Entry("x", "w", 2.0, 1.0, "s", max_ratio=1.5).met is False
    assert Entry("x", "w", 3.0, 1.0, "x", min_ratio=2.0).met is True
    assert Entry("x", "w", 3.0, 1.0, "x").met is None
    d = e.to_dict()
    assert set(d) >= {"name", "what", "ours", "baseline", "ratio", "unit", "target", "met"}


def test_bench_quick_writes_json_and_plot(tmp_path, capsys):
    assert "optim" in available()
    rc = main(["bench", "--quick", "--only", "optim", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["quick"] is True and data["errors"] == {}
    names = {e["name"] for e in data["entries"]}
    assert {"diffgrad-update/adam", "diffgrad-train-step/adam"} <= names
    for e in data["entries"]:
        assert e["ours"] > 0 and e["baseline"] > 0 and e["ratio"] > 0
    assert set(data["environment"]) >= {"jax", "backend"}
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "entries:" in capsys.readouterr().out


def test_bench_unknown_topic(capsys, tmp_path):
    assert main(["bench", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_partial_rerun_keeps_other_topics(tmp_path):
    # `lgrad bench --only optim` updates optim's rows and keeps the other topics' rows.
    other = {"name": "x/y", "what": "w", "ours": 2.0, "baseline": 1.0, "ratio": 2.0, "unit": "s",
             "target": "ratio <= 3", "max_ratio": 3.0, "min_ratio": None, "met": True, "extra": {"topic": "elsewhere"}}
    stale = dict(other, name="diffgrad-update/adam", extra={"topic": "optim"})
    (tmp_path / "bench.json").write_text(json.dumps({"quick": True, "entries": [other, stale]}))
    assert main(["bench", "--quick", "--only", "optim", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["entries"]
    assert [r["name"] for r in rows].count("x/y") == 1
    assert [r["name"] for r in rows].count("diffgrad-update/adam") == 1
    assert next(r for r in rows if r["name"] == "diffgrad-update/adam")["ours"] != 2.0
