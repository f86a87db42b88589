"""blind-spots: the claims from hand-made measurements (the SMOKE run is in test_experiments_smoke)."""
from __future__ import annotations

import pytest

from experiments import blind_spots as exp


def _seed(**over):
    return dict(dict(accuracy=0.9, cos_max=1e-7, median_ratio=0.25, max_drop=0.04, accept_rate=0.3,
                     path_drop=[0.0, 0.05, 0.1, 0.01]), **over)


def test_claims_follow_the_criteria():
    cfg = dict(exp.CONFIGS["quick"], n_seeds=2, n_pairs=4)
    ids = {c.id: c for c in exp.claims({"per_seed": [_seed(), _seed(median_ratio=0.33)]}, cfg)}
    assert ids["step-orthogonal"].passed and ids["confidence-kept"].passed
    assert ids["reaches-target"].measured == pytest.approx(0.29) and ids["reaches-target"].passed
    assert ids["star-shaped"].measured == 1.0 and ids["star-shaped"].passed  # 0.1 itself is within (float32)
    assert ids["accept-rate"].passed is None and ids["accept-rate"].measured == [0.3, 0.3]
    bad = {c.id: c for c in exp.claims({"per_seed": [_seed(cos_max=1e-3, max_drop=0.2, path_drop=[0.0, 0.5])]}, cfg)}
    assert not bad["step-orthogonal"].passed and not bad["confidence-kept"].passed
    assert bad["star-shaped"].measured == 0.5 and not bad["star-shaped"].passed
