"""Test setup: 8 virtual CPU devices (multi-device code is tested on CPU), set
before jax is imported anywhere."""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
# One OpenBLAS thread: its spinning threads otherwise starve XLA's (see lgrad/cli/__init__.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The CLI's XLA:CPU flags (reductions out of YNNPACK, see lgrad/cli/__init__.py), so tests
# run what the commands run.
import lgrad.cli  # noqa: E402,F401

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))

# CI runs hypothesis derandomized (the same examples every run, so a landing never
# hinges on a lucky draw); locally each run explores new examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The fixture experiment (tests/fixtures/fixture_experiment): tests that use it take the
# `fixture_experiment` fixture, which makes it the only experiment the registry finds
# (so engine/checkpoint tests neither import nor depend on the real reproductions).
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))
FIXTURE_NAME = "fixture-quadratic"


@pytest.fixture
def fixture_experiment(monkeypatch):
    """Make ``fixture-quadratic`` the only discoverable experiment; returns its name."""
    from lgrad.engine import registry

    monkeypatch.setattr(registry, "experiment_packages", lambda: ["fixture_experiment"])
    return FIXTURE_NAME


# The tests named in tests/slow_tests.json (the slowest ones, measured on a 2-core CPU by
# scripts/mark_slow_tests.py) are marked slow too, so `pytest -m "not slow"` is the quick
# subset (under 3 minutes); plain `pytest` runs everything.
import json  # noqa: E402

_SLOW_FILE = Path(__file__).parent / "slow_tests.json"
_SLOW = set(json.loads(_SLOW_FILE.read_text())["slow"]) if _SLOW_FILE.exists() else set()


# Checks that run in one background process (tests/background.py): started at low priority
# once the session's tests are collected, on the core the compile-bound test process leaves idle;
# their tests run last and read what the process wrote. Same checks, same code, same
# XLA flags and device count (the environment above is inherited).
_BACKGROUND_FILES = ("tests/test_backends_mesh.py", "tests/test_experiments_smoke.py")
_BG: dict = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in _SLOW:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.nodeid.split("::")[0] in _BACKGROUND_FILES)  # stable: the rest keep their order


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    import tempfile

    import background

    picked = {f: [i for i in session.items if i.nodeid.startswith(f + "::")] for f in _BACKGROUND_FILES}
    if not any(picked.values()):
        return
    _BG["dir"] = out = Path(tempfile.mkdtemp(prefix="lgrad-background-"))
    mesh = []
    if picked["tests/test_backends_mesh.py"]:
        mod = picked["tests/test_backends_mesh.py"][0].module
        (out / "mesh_script.py").write_text(mod._SCRIPT)
        mesh = [str(out / "mesh_script.py"), *mod.EXPERIMENTS]
    smoke = list(dict.fromkeys(i.callspec.params["name"] for i in picked["tests/test_experiments_smoke.py"]))
    _BG["proc"] = background.start(out, mesh, smoke)


def pytest_sessionfinish(session):
    import shutil

    if "proc" in _BG:
        import background

        background.stop(_BG["proc"])
    if "dir" in _BG:
        shutil.rmtree(_BG["dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def background_jobs():
    """``{"dir": Path, "proc": Popen}``: the background checks' process (tests/background.py) and its output folder."""
    return _BG
