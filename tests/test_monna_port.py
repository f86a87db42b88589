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


def test_line_searched_attack_uses_the_authors_damage_over_all_honest_nodes():
    import jax
    import jax.numpy as jnp

    from lgrad import robust

    cfg = _cfg(line_search=True)
    f = cfg["f"]
    rule = exp._rule("MoNNA", f)
    h = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
    got = exp._attack("alie", cfg, rule, f)(h)

    def damage(x):  # mean over the 8 honest nodes' NNA outputs (the authors' eval_factor for CVA)
        return jnp.mean(jnp.stack([robust.nna(x, f, i) for i in range(8)]), axis=0)

    want, _ = robust.attacks.line_search(robust.attacks.alie, damage, h, f, exp.LS_GRID)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert cfg["attack_space"] == "params" and exp._attack("sign_flip", cfg, rule, f) is robust.attacks.sign_flip


def test_claims_threshold_the_seed_mean_and_report_the_spread():
    def run(ref, monna, dsgd):
        s = lambda v: {"final_loss": v, "final_acc": 0.9}  # noqa: E731
        return {"reference": s(ref), "alie": {"MoNNA": s(monna), "D-SGD": s(dsgd)}}

    cfg = _cfg(attacks=["alie"])
    measurements = {"nna_f0_error": 2e-7, "runs": {"alpha=1": [run(1.0, 1.05, 2.0), run(1.0, 1.2, 1.0)]}}
    claims = {c.id: c for c in exp.claims(measurements, cfg)}
    assert claims["nna-f0-is-mean"].passed and claims["nna-f0-is-mean"].measured == 2e-7
    c = claims["monna-alie-alpha=1"]
    assert c.measured["per_seed"] == [1.05, 1.2] and c.measured["mean"] == pytest.approx(1.125)
    assert c.passed is False and c.target == "mean <= 1.1"
    assert claims["averaging-fails-alie-alpha=1"].passed is True  # mean 1.5 > 1.1
    assert claims["final-honest-loss-alpha=1"].measured == {"alie": {"MoNNA": [1.125, 0.9], "D-SGD": [1.5, 0.9]}}
