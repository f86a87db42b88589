"""dsgd-topology on lgrad.federated: D-SGD from the library, exact bytes, the probe, limits."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import experiments.dsgd_topology as exp
from lgrad.distributed import topology
from lgrad.engine.config import ConfigError, apply_overrides, validate_config

TINY = dict(steps=20, n_seeds=2, samples_per_worker=20, dim=4, batch_size=5, check_steps=0)


def _cfg(**over):
    return apply_overrides(exp.CONFIGS["quick"], dict(TINY, **over))


def test_one_round_is_dsgd_with_metropolis_hastings_gossip():
    """Round 1 from zero params: x_i = sum_j W_ij (0 - lr grad F_j(0; batch_j)), per seed."""
    cfg = _cfg()
    hist, params, sent, data = exp._train(cfg, "vmap", 1)
    assert sent == {"complete": 15 * 4 * 4, "torus": 4 * 4 * 4, "ring": 2 * 4 * 4}
    # the minibatches the round drew (the same keys: split the run key, then per worker)
    _, sub = jax.random.split(jax.random.PRNGKey(cfg["seed"]))
    keys = jax.random.split(sub, cfg["n_workers"])
    batch = exp._seed_batches(cfg["batch_size"])
    half = []
    for i in range(cfg["n_workers"]):
        xb, yb = (np.asarray(a, np.float64) for a in batch((data.arrays[0][i], data.arrays[1][i]), data.count[i], keys[i]))
        grad0 = np.einsum("sbd,sb->sd", xb, 0.5 - yb) / cfg["batch_size"]  # logistic loss gradient at w = 0
        half.append(-cfg["learning_rate"] * grad0)
    half = np.stack(half)  # (n, S, d)
    for name, w in exp._mixing(cfg["n_workers"]).items():
        np.testing.assert_allclose(params[name], np.einsum("ij,jsd->isd", w, half), rtol=1e-5, atol=1e-7)
    assert hist["ring/consensus"].shape == (1, 2) and hist["ring/bytes_sent"][0] == 32
    assert hist["eval_steps"].tolist() == [1]  # the diagnostics after the round; step 0 dropped


def test_diagnostics_every_log_every_steps_and_tail_over_them():
    """Consensus and f(xbar) are evaluated every log_every steps (and after the last);
    the tail means are over the evaluations in the last tail_fraction of the steps."""
    cfg = _cfg(steps=23, log_every=5, tail_fraction=0.5)
    hist, params, _, data = exp._train(cfg, "vmap", cfg["steps"])
    assert hist["eval_steps"].tolist() == [5, 10, 15, 20, 23]
    assert hist["ring/consensus"].shape == (5, 2) and hist["ring/bytes_sent"].shape == (23,)
    wbar = params["ring"].mean(0)
    np.testing.assert_allclose(hist["ring/consensus"][-1], ((params["ring"] - wbar) ** 2).sum(-1).mean(0), rtol=1e-5)
    res = exp._measure(cfg, hist, data)
    assert res["tail"] == 12 and res["tail_evals"] == 3  # steps 15, 20, 23 lie in the last 12
    np.testing.assert_allclose(res["final_cons"]["ring"], hist["ring/consensus"][2:].astype(np.float64).mean(0), rtol=1e-12)


def test_backend_probe_on_one_device_and_keys():
    cfg = apply_overrides(exp.CONFIGS["quick"], exp.PROBE)
    assert cfg["n_workers"] % 8 == 0
    out = exp.backend_probe(dict(cfg, samples_per_worker=10, dim=3), "vmap", rounds=2)
    assert {"ring/params", "torus/consensus", "complete/loss"} <= set(out)
    assert all(np.all(np.isfinite(v)) for v in out.values())
    if jax.device_count() == 1:  # one device: the mesh backend runs too, same numbers
        mesh = exp.backend_probe(dict(cfg, samples_per_worker=10, dim=3), "mesh", rounds=2)
        assert max(float(np.max(np.abs(out[k] - mesh[k]))) for k in out) <= 1e-6


def test_limits_and_bad_inputs():
    validate_config(exp.CONFIGS["quick"], exp.LIMITS)
    validate_config(exp.CONFIGS["full"], exp.LIMITS)
    assert set(exp.CONFIGS["quick"]) == set(exp.CONFIGS["full"]) and set(exp.PROBE) <= set(exp.CONFIGS["quick"])
    with pytest.raises(ConfigError, match="backend"):
        validate_config(_cfg(backend="gpu"), exp.LIMITS)
    with pytest.raises(ValueError, match="perfect square.*n_workers=12"):
        exp._graphs(12)


def _measurements(cfg, **over):
    """Hand-made measurements in the form measure returns (as read back from JSON)."""
    graphs = exp._graphs(cfg["n_workers"])
    cons = {"complete": [1e-12], "torus": [1e-3], "ring": [1e-2]}
    m = dict(tail=6, tail_evals=2, final_cons=cons, final_sub={k: [0.1] for k in cons}, mean_cons={k: v[0] for k, v in cons.items()},
             mean_sub={k: 0.1 for k in cons},
             gaps={k: topology.spectral_gap(w) for k, w in exp._mixing(cfg["n_workers"]).items()},
             degree={k: int(a.sum(1).max()) for k, a in graphs.items()},
             bytes_sent={k: int(a.sum(1).max()) * cfg["dim"] * 4 for k, a in graphs.items()},
             backends={"skipped": "check_steps = 0 in this config"})
    return dict(m, **over)


def test_claims_from_measurements():
    cfg = apply_overrides(exp.CONFIGS["quick"], dict(exp.SMOKE, dim=4, samples_per_worker=20))
    by_id = {c.id: c for c in exp.claims(_measurements(cfg), cfg)}
    assert by_id["bytes-per-step"].passed and by_id["spectral-gaps-closed-form"].passed
    assert by_id["consensus-order"].passed
    assert by_id["backends-agree"].is_skipped  # check_steps = 0 in SMOKE: skipped, never a finding
    assert "order-matches-spectral-gap" not in by_id  # it restated consensus-order
    bad = _measurements(cfg, bytes_sent={"complete": 1, "torus": 1, "ring": 1}, backends={"worst": 1.0, "where": "x"})
    by_id = {c.id: c for c in exp.claims(bad, cfg)}
    assert not by_id["bytes-per-step"].passed and not by_id["backends-agree"].passed


@pytest.mark.slow
def test_backends_agree_compares_in_an_8_device_subprocess():
    cfg = apply_overrides(exp.CONFIGS["quick"], dict(exp.PROBE, dim=3, samples_per_worker=10, check_steps=3))
    claim = exp._backend_claim(cfg, exp._compare_backends(cfg))
    if jax.device_count() == 1:
        assert "subprocess" in claim.statement, claim
    assert claim.passed is True, claim
