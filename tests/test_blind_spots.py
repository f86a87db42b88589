"""blind-spots: the SMOKE run; the traversal's step is orthogonal and keeps confidence."""
from __future__ import annotations

from experiments import blind_spots as exp
from lgrad.engine import run_experiment


def test_smoke(tmp_path):
    result = run_experiment(exp.NAME, "quick", exp.SMOKE, tmp_path, show_progress=False)
    ids = {c.id: c for c in result.claims}
    assert ids["step-orthogonal"].passed and ids["confidence-kept"].passed
    assert {"reaches-target", "star-shaped", "accept-rate"} <= set(ids)
