"""Layering: the library imports neither ``experiments`` nor ``lgrad.cli``; ``lgrad.train``
sits below ``lgrad.engine``; every library module imports without ``experiments``;
``import lgrad`` exposes the subpackages lazily; the registry finds experiments through
the ``lgrad.experiments`` entry point and ``$LGRAD_EXPERIMENTS`` and checks the sweep
protocol at discovery."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lgrad"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(LIB.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names imported anywhere in the module (lazy imports included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_library_imports_neither_experiments_nor_the_cli():
    bad = []
    for name, path in _modules().items():
        if name == "lgrad.cli" or name.startswith("lgrad.cli."):
            continue
        for imp in _imports(name, path):
            if imp == "experiments" or imp.startswith("experiments.") or imp == "lgrad.cli" or imp.startswith("lgrad.cli."):
                bad.append(f"{name} imports {imp}")
    assert not bad, bad


def test_train_does_not_import_the_engine():
    mods = _modules()
    for name in [n for n in mods if n == "lgrad.train" or n.startswith("lgrad.train.")]:
        for imp in _imports(name, mods[name]):
            assert not (imp == "lgrad.engine" or imp.startswith("lgrad.engine.")), f"{name} imports {imp}"
            assert not imp.startswith(("lgrad.sweep", "lgrad.cli", "lgrad.bench")), f"{name} imports {imp}"


@pytest.mark.slow
def test_every_library_module_imports_without_experiments(tmp_path):
    """A subprocess where ``import experiments`` fails imports every ``lgrad`` module."""
    (tmp_path / "experiments.py").write_text("raise ImportError('experiments is unavailable here')\n")
    names = [n for n in _modules() if not n.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "import lgrad\n"
        "assert 'jax' not in sys.modules, 'import lgrad must stay light'\n"
        "for n in names: importlib.import_module(n)\n"
        "assert 'experiments' not in sys.modules\n"
        "print('ok', len(names))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]


def test_import_lgrad_exposes_subpackages_lazily():
    import lgrad

    assert lgrad.optim.diffgrad is not None and lgrad.train.scan_steps is not None
    assert "robust" in dir(lgrad)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lgrad.nope  # noqa: B018


def test_registry_sources(monkeypatch):
    from lgrad.engine import registry

    monkeypatch.setenv(registry.ENV_VAR, "fixture_experiment, other_pkg")
    assert registry.experiment_packages() == ["experiments", "fixture_experiment", "other_pkg"]


def test_registry_finds_the_fixture_and_its_x64_flag(fixture_experiment):
    from lgrad.engine import discover

    table = discover()
    assert list(table) == [fixture_experiment]
    exp = table[fixture_experiment]
    assert exp.sweepable == ("learning_rate", "target") and exp.x64 is False


def _module(**attrs):
    m = types.ModuleType("fake_experiment")
    base = dict(NAME="fake", PAPER="p", CONFIGS={"quick": {"seed": 0, "lr": 0.1, "steps": 3, "kind": "a"}, "full": {"seed": 0, "lr": 0.1, "steps": 3, "kind": "a"}},
                CRITERIA={"tol": 0.1}, measure=lambda c, ctx: {}, claims=lambda m, c: [])
    for k, v in {**base, **attrs}.items():
        setattr(m, k, v)
    return m


def _cell(static, hp, key):
    return {}


@pytest.mark.parametrize(
    "attrs, message",
    [
        (dict(SWEEPABLE=("lr",)), "SWEEPABLE without train_cell"),
        (dict(train_cell=_cell, SWEEPABLE=("nope",)), "SWEEPABLE key 'nope' must be a numeric config key, got absent"),
        (dict(train_cell=_cell, SWEEPABLE=("kind",)), "SWEEPABLE key 'kind' must be a numeric config key, got 'a'"),
        (dict(train_cell=_cell, SWEEPABLE="lr"), "SWEEPABLE must be a tuple of config key names"),
        (dict(train_cell=_cell, SWEEP_METRIC=("loss", "lowest")), "SWEEP_METRIC must be (metric name, 'min' or 'max')"),
        (dict(train_cell=_cell, sweep_claims=3), "sweep_claims must be callable"),
        (dict(train_cell=3), "train_cell must be callable"),
        (dict(X64=1), "X64 must be True or False"),
        (dict(X64=True, SWEEP_X64=False), "SWEEP_X64 (the former name of X64) is False but X64 is True"),
        (dict(CRITERIA=[0.1]), "CRITERIA must be a dict of threshold name -> number, got list"),
        (dict(CRITERIA={"tol": "0.1"}), "CRITERIA['tol'] must be a number under a string key, got '0.1'"),
        (dict(CRITERIA={"tol": True}), "CRITERIA['tol'] must be a number under a string key, got True"),
        (dict(measure=lambda c: {}), "measure must take (config, ctx)"),
        (dict(claims=lambda m, c, extra: []), "claims must take (measurements, config)"),
        (dict(claims=3), "claims must be callable, got int"),
        (dict(run=lambda c, ctx: []), "define measure and claims, not run"),
    ],
)
def test_registry_checks_the_contract_and_sweep_protocol_at_discovery(attrs, message):
    from lgrad.engine.registry import _load

    with pytest.raises(TypeError) as e:
        _load(_module(**attrs))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_x64_runs_the_experiment_in_float64():
    import jax.numpy as jnp

    from lgrad.engine.registry import _load

    def measure(config, ctx):
        return {"dtype": str(jnp.zeros(1).dtype)}

    exp = _load(_module(X64=True, measure=measure, claims=lambda m, c: [m["dtype"]]))
    assert exp.x64 and exp.measure({}, None) == {"dtype": "float64"}
    assert _load(_module(measure=measure, claims=lambda m, c: [m["dtype"]])).measure({}, None) == {"dtype": "float32"}


def test_a_module_missing_the_contract_is_named():
    from lgrad.engine.registry import _load

    m = _module()
    del m.claims, m.CRITERIA
    with pytest.raises(TypeError, match="lacks CRITERIA, claims"):
        _load(m)
