"""Each registered experiment runs end to end in its tiny SMOKE configuration.
(The claims themselves are checked by `lgrad reproduce --quick`, not here.)"""
from __future__ import annotations

import json

import pytest

from lgrad.engine import discover, run_experiment
from lgrad.engine.runner import reevaluate

NAMES = list(discover())
pytestmark = pytest.mark.slow  # ~7 minutes on 2 cores; `pytest -m "not slow"` leaves them out


@pytest.mark.parametrize("name", NAMES)
def test_experiment_smoke(name, tmp_path):
    exp = discover()[name]
    result = run_experiment(name, "quick", exp.smoke, tmp_path, show_progress=False)
    assert result.claims, f"{name} returned no claims"
    data = json.loads((tmp_path / exp.name / "result.json").read_text())
    assert data["name"] == name and len(data["claims"]) == len(result.claims)
    assert list((tmp_path / exp.name).glob("*.png")), f"{name} wrote no plot"
    assert (tmp_path / exp.name / "metrics.jsonl").stat().st_size > 0
    stored, again = reevaluate(name, tmp_path)  # the claims follow from the stored measurements alone
    assert [c.to_dict() for c in again] == [c.to_dict() for c in stored]
