"""monna-robustness on lgrad.federated: client data, label flip up front, the probe, limits."""
from __future__ import annotations

import numpy as np
import pytest

import experiments.monna_robustness as exp
from lgrad.engine.config import ConfigError, apply_overrides, validate_config

TINY = dict(steps=2, eval_every=0, downsample=7, attacks=["sign_flip", "label_flip"], methods=["MoNNA", "D-SGD"],
            line_search=False)


def _cfg(**over):
    return apply_overrides(exp.CONFIGS["quick"], dict(TINY, **over))


def test_client_data_and_label_flip():
    cfg = _cfg()
    split = exp._data(cfg, 1.0)
    n, f = cfg["n"], cfg["f"]
    (x, y), count = split.clean
    assert x.shape[:2] == y.shape and x.shape[0] == n and x.shape[2] == 16 and count.sum() == 4000
    flipped = split.flipped.arrays[1]
    np.testing.assert_array_equal(flipped[: n - f], y[: n - f])  # honest labels untouched
    np.testing.assert_array_equal(flipped[n - f:], 9 - y[n - f:])  # Byzantine labels y -> 9 - y
    assert split.honest[0].shape[0] == int(count[: n - f].sum())


def test_backend_probe_runs_every_job_finite():
    cfg = apply_overrides(exp.CONFIGS["quick"], dict(exp.PROBE, **TINY))
    assert cfg["n"] % 8 == 0 and (cfg["n"] - cfg["f"]) % 8 == 0
    out = exp.backend_probe(cfg, "vmap", rounds=2)
    labels = {k.split("/params")[0] for k in out if "/params/" in k}
    assert labels == {"reference", "sign_flip/MoNNA", "sign_flip/D-SGD", "label_flip/MoNNA", "label_flip/D-SGD"}
    assert out["reference/params/w"].shape[0] == cfg["n"] - cfg["f"]
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_limits_and_bad_inputs():
    validate_config(exp.CONFIGS["quick"], exp.LIMITS)
    validate_config(exp.CONFIGS["full"], exp.LIMITS)
    assert set(exp.CONFIGS["quick"]) == set(exp.CONFIGS["full"]) and set(exp.PROBE) <= set(exp.CONFIGS["quick"])
    for bad in (dict(attacks=["alie", "gradient_noise"]), dict(backend="pmap"), dict(beta=1.0), dict(downsample=3)):
        with pytest.raises(ConfigError):
            validate_config(_cfg(**bad), exp.LIMITS)
    with pytest.raises(ValueError, match="need 2f < n, got n=10, f=5"):
        exp._check(_cfg(n=10, f=5))
    assert exp._reference_backend("vmap", 21) == "vmap"
