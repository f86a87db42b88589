"""lfa-no-free-lunch: linear recovery is exact; the claims follow from the measurements."""
from __future__ import annotations

import jax
import numpy as np

from experiments import lfa_no_free_lunch as exp


def test_linear_recovery_every_method():
    cfg = dict(exp.CONFIGS["quick"], n_points=2, n_samples=200)
    with jax.enable_x64(True):
        errs = exp.linear_recovery(cfg, jax.random.PRNGKey(0))
    assert set(errs) == set(exp.METHODS) and max(errs.values()) < 1e-8


def _measurements(mats):
    return {"linear_error": {m: 1e-12 for m in exp.METHODS}, "loss_matrices": mats, "clime_vs_smoothgrad": [0.01, 0.02]}


def test_claims_from_hand_made_measurements():
    """``claims`` alone, on measurements as read back from JSON (lists)."""
    n = len(exp.METHODS)
    config = dict(exp.SMOKE, n_points=2, n_seeds=1, n_samples=100)
    diagonal = (np.ones((n, n)) - 0.5 * np.eye(n)).tolist()  # every own method strictly lowest
    out = {c.id: c for c in exp.claims(_measurements([diagonal, diagonal]), config)}
    assert out["linear-recovery"].passed and out["own-method-lowest"].measured == 1.0 and out["own-method-lowest"].passed
    assert out["no-single-best"].passed and out["clime-equals-smoothgrad"].measured == 0.02
    assert out["argmin-counts"].measured == {m: 2 for m in exp.METHODS}
    # one method lowest everywhere in the second case: no free lunch fails there
    dominated = np.ones((n, n))
    dominated[:, 0] = 0.1
    out = {c.id: c for c in exp.claims(_measurements([diagonal, dominated.tolist()]), config)}
    assert not out["no-single-best"].passed and not out["own-method-lowest"].passed
    assert out["own-method-lowest"].measured == (n + 1) / (2 * n)
