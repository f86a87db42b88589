"""lfa-no-free-lunch: the SMOKE run returns its claims; linear recovery is exact."""
from __future__ import annotations

import jax

from experiments import lfa_no_free_lunch as exp
from lgrad.engine import run_experiment


def test_smoke(tmp_path):
    result = run_experiment(exp.NAME, "quick", exp.SMOKE, tmp_path, show_progress=False)
    ids = {c.id: c for c in result.claims}
    assert ids["linear-recovery"].passed
    assert {"own-method-lowest", "no-single-best", "clime-equals-smoothgrad"} <= set(ids)


def test_linear_recovery_every_method():
    cfg = dict(exp.CONFIGS["quick"], n_points=2, n_samples=200)
    with jax.enable_x64(True):
        errs = exp.linear_recovery(cfg, jax.random.PRNGKey(0))
    assert set(errs) == set(exp.METHODS) and max(errs.values()) < 1e-8
