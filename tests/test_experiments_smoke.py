"""Each registered experiment runs end to end in its tiny SMOKE configuration.
(The claims themselves are checked by `lgrad reproduce --quick`, not here.) The runs
happen in a background process started at collection (tests/conftest.py), on the core
the compile-bound test process leaves idle; these tests run last and check its outputs."""
from __future__ import annotations

import json

import pytest

from lgrad.engine import discover
from lgrad.engine.runner import reevaluate

NAMES = list(discover())
pytestmark = pytest.mark.slow  # ~7 minutes on 2 cores; `pytest -m "not slow"` leaves them out


@pytest.mark.parametrize("name", NAMES)
def test_experiment_smoke(name, background_jobs):
    """``run_experiment(name, "quick", SMOKE)`` ran in the background process (tests/background.py,
    started at collection by tests/conftest.py) into ``<dir>/<name>/``; here its outputs are checked."""
    from background import wait_for

    exp = discover()[name]
    status = wait_for(background_jobs["dir"] / f"{name}.done", background_jobs["proc"])
    assert status == "ok", f"{name} failed in the background run:\n{status}"
    out = background_jobs["dir"] / name
    data = json.loads((out / exp.name / "result.json").read_text())
    assert data["claims"], f"{name} returned no claims"
    assert data["name"] == name
    assert list((out / exp.name).glob("*.png")), f"{name} wrote no plot"
    assert (out / exp.name / "metrics.jsonl").stat().st_size > 0
    stored, again = reevaluate(name, out)  # the claims follow from the stored measurements alone
    assert [c.to_dict() for c in again] == [c.to_dict() for c in stored]
