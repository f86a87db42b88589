"""mudhog-detection on lgrad.federated: its helpers, config checks and backends (small synthetic data)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments.mudhog_detection as exp
from lgrad import federated
from lgrad.engine.config import ConfigError, apply_overrides, validate_config


def _cfg(**over):
    small = dict(n_clients=8, n_sign=1, n_noise=1, n_label=1, n_unreliable=1, krum_f=2, rounds=3, local_steps=1,
                 batch_size=4)
    return dict(exp.CONFIGS["quick"], **dict(small, **over))


def _data(cfg, d=16, m=12, seed=0):
    rng = np.random.default_rng(seed)
    n = cfg["n_clients"]
    x = rng.normal(size=(n, m, d)).astype(np.float32)
    y = rng.integers(0, 10, size=(n, m)).astype(np.int32)
    clients = federated.ClientData((jnp.asarray(x), jnp.asarray(y)), jnp.full((n,), m, jnp.int32))
    xt = jnp.asarray(rng.normal(size=(20, d)).astype(np.float32))
    return exp._Data(clients, xt, jnp.asarray(rng.integers(0, 10, 20)), exp._truth(cfg))


def test_truth_layout_follows_the_counts():
    np.testing.assert_array_equal(exp._truth(_cfg()), [1, 2, 3, 4, 0, 0, 0, 0])
    assert exp._truth(exp.CONFIGS["quick"]).tolist() == [1] * 5 + [2] * 5 + [3] * 5 + [4] * 4 + [0] * 21


def test_degrade_touches_only_label_and_unreliable_clients():
    cfg = _cfg(n_clients=6, flip_source=1, flip_target=7)
    truth = exp._truth(cfg)
    xs = np.random.default_rng(0).uniform(size=(6, 5, 16)).astype(np.float32)
    ys = np.tile(np.arange(5, dtype=np.int32), (6, 1))
    x2, y2 = exp._degrade(cfg, xs, ys, truth)
    label, unrel = np.flatnonzero(truth == exp.LABEL), np.flatnonzero(truth == exp.UNRELIABLE)
    assert y2[label[0]].tolist() == [0, 7, 2, 3, 4]
    others = np.setdiff1d(np.arange(6), label)
    np.testing.assert_array_equal(y2[others], ys[others])
    assert not np.allclose(x2[unrel[0]], xs[unrel[0]])
    keep = np.setdiff1d(np.arange(6), unrel)
    np.testing.assert_array_equal(x2[keep], xs[keep])


def test_poisoning_flips_and_noises_the_right_rows():
    truth = np.array([1, 2, 0, 0])
    x = jnp.ones((4, 3))
    out = exp._poisoning(truth, 0.1)(x, jnp.arange(4), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(out[0], -1.0)
    assert not np.allclose(out[1], 1.0) and np.allclose(out[1], 1.0, atol=0.5)
    np.testing.assert_array_equal(out[2:], 1.0)


def test_reference_aggregator_averages_only_the_kept_clients():
    agg = exp._subset_mean(np.array([True, False, True]))
    x = jnp.array([[1.0, 2.0], [100.0, 100.0], [3.0, 4.0]])
    out, _, _ = agg.update(agg.init(3, 2, x.dtype), x, jnp.ones(3), jnp.arange(3), None)
    np.testing.assert_allclose(out, [2.0, 3.0])


def test_check_config_refuses_too_many_faulty_clients_and_a_large_krum_f():
    with pytest.raises(ValueError, match="exceeds n_clients=8"):
        exp.check_config(_cfg(n_sign=6))
    with pytest.raises(ValueError, match="krum_f=4, n_clients=8"):
        exp.check_config(_cfg(krum_f=4))
    exp.check_config(_cfg(krum_f=4, methods=["MUD-HoG"]))


def test_limits_accept_both_configs_and_refuse_a_bad_backend():
    for mode in ("quick", "full"):
        validate_config(exp.CONFIGS[mode], exp.LIMITS, check=exp.check_config)
    with pytest.raises(ConfigError, match="backend"):
        validate_config(dict(exp.CONFIGS["quick"], backend="gpu"), exp.LIMITS)
    assert apply_overrides(exp.CONFIGS["quick"], {"backend": "mesh"})["backend"] == "mesh"


def test_every_method_runs_and_mesh_equals_vmap_on_one_device():
    cfg = _cfg()
    data = _data(cfg)
    key = jax.random.PRNGKey(0)
    (res,) = exp._simulate(cfg, [data], "MUD-HoG", keys=[key])
    assert res.history["flags"].shape == (3, 8) and res.evals["test_acc"].shape == (4,)
    (mesh,) = exp._simulate(cfg, [data], "MUD-HoG", keys=[key], backend="mesh")
    for k in ("w", "b"):
        np.testing.assert_allclose(mesh.state[0].params[k], res.state[0].params[k], atol=1e-5)
    for method in ("Krum", exp.REFERENCE):  # FedAvg runs in the smoke test; median is a rule like Krum
        (out,) = exp._simulate(cfg, [data], method, keys=[key], rounds=1)
        assert np.isfinite(out.evals["test_acc"]).all()
    with pytest.raises(ValueError, match="method must be one of"):
        exp._algorithm(cfg, "trimmed", data.truth, "vmap")


def test_runs_simulated_together_equal_the_runs_alone():
    """Two runs in one vmapped program (the second's shards padded to the first's length) give
    each run's own flags and parameters; runs with other client classes are refused."""
    cfg = _cfg()
    a, b = _data(cfg), _data(cfg, m=6, seed=1)
    keys = [jax.random.PRNGKey(0), jax.random.PRNGKey(1)]
    both = exp._simulate(cfg, [a, b], "MUD-HoG", keys=keys)
    for data, key, res in zip((a, b), keys, both):
        (alone,) = exp._simulate(cfg, [data], "MUD-HoG", keys=[key])
        np.testing.assert_array_equal(res.history["flags"], alone.history["flags"])
        for k in ("w", "b"):
            np.testing.assert_allclose(res.state[0].params[k], alone.state[0].params[k], atol=1e-6)
    other = b._replace(truth=np.roll(b.truth, 1))
    with pytest.raises(ValueError, match="share the client classes"):
        exp._simulate(cfg, [a, other], "FedAvg", keys=keys)


def test_claims_from_hand_made_measurements():
    """``claims`` alone, on measurements as read back from JSON (2 seeds)."""
    pr = lambda p, r, true=5: {"precision": p, "recall": r, "flagged": 5, "true": true, "precision_end": p, "recall_end": r}  # noqa: E731
    per_class = {"sign": [pr(1.0, 1.0), pr(1.0, 0.8)], "noise": [pr(0.5, 1.0), pr(0.75, 1.0)], "label": [pr(0.0, float("nan"), 0)] * 2}
    measurements = {
        "acc": [{exp.REFERENCE: 0.9, "MUD-HoG": 0.85, "FedAvg": 0.8}, {exp.REFERENCE: 0.9, "MUD-HoG": 0.75, "FedAvg": 0.8}],
        "detection": {"round": 5, "per_class": per_class},
        "heterogeneity": [{"alpha": 10.0, "round": 5, "per_class": per_class, "final_acc": [0.5, 0.75]}],
    }
    out = {c.id: c for c in exp.claims(measurements, exp.CONFIGS["quick"])}
    assert set(out) == {"detect-sign-round5", "detect-noise-round5", "accuracy-vs-baselines", "final-accuracy", "heterogeneity-alpha10"}
    assert out["detect-sign-round5"].passed and out["detect-sign-round5"].measured["mean"] == 0.9
    assert not out["detect-noise-round5"].passed and out["detect-noise-round5"].target == "mean >= 0.9"
    acc = out["accuracy-vs-baselines"]
    assert acc.measured["per_seed"] == [0.05, -0.05] and acc.measured["mean"] == 0.0 and acc.passed
    assert out["final-accuracy"].measured["MUD-HoG"] == [0.8, 0.05]
    assert out["heterogeneity-alpha10"].measured["sign"] == [1.0, 0.9] and "0.625 +- 0.125" in out["heterogeneity-alpha10"].note
