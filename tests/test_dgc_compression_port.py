"""dgc-compression on lgrad.federated: the transform measured is lgrad.optim.dgc itself,
its bytes are the comm counter's, and the probe's replicas stay identical (vmap == mesh is
tests/test_backends_mesh.py's)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import dgc_compression as exp
from lgrad.engine.config import GENERIC_LIMITS, validate_config
from lgrad.optim import DGCState, leaf_budget

CFG = dict(exp.CONFIGS["quick"], **exp.PROBE)


def test_configs_share_keys_and_limits_cover_backend():
    assert exp.CONFIGS["quick"].keys() == exp.CONFIGS["full"].keys()
    assert set(exp.LIMITS) <= set(exp.CONFIGS["quick"])
    for mode in ("quick", "full"):
        validate_config(exp.CONFIGS[mode], exp.LIMITS, check=exp.check_config, available=2**40)
    with pytest.raises(ValueError, match="backend"):
        validate_config(dict(CFG, backend="pmap"), exp.LIMITS, available=2**40)
    assert GENERIC_LIMITS  # seed, epochs, learning_rate, momentum, eval_every come from here


def test_check_config_refuses_an_empty_selection():
    with pytest.raises(ValueError, match="final_density=0.0001 selects 0 entries of a 10-entry leaf"):
        exp.check_config(dict(CFG, final_density=1e-4, min_compress_size=0))
    exp.check_config(dict(CFG, final_density=1e-3, min_compress_size=100, hidden=512))  # the quick setting


def _expected_dgc_bytes(cfg, density):
    """values + int32 indices at the message capacity for compressed leaves; float32 pmean for the rest."""
    params = exp._params0(cfg)
    total = 0
    for leaf in jax.tree.leaves(params):
        size = int(np.prod(leaf.shape))
        if size < cfg["min_compress_size"]:
            total += 4 * size
        else:
            total += 8 * leaf_budget(size, density)[1]
    return total


def test_dgc_algorithm_is_the_library_transform_and_counts_its_bytes():
    cfgs = exp._seed_cfgs(dict(CFG, n_seeds=2))
    inputs, _ = exp._inputs(cfgs)
    alg = exp._dgc_algorithm(cfgs[0], 0.25)
    state = exp._init(lambda c: exp._dgc_algorithm(c, 0.25), cfgs)
    assert isinstance(exp._dgc_state(state.opt_state), DGCState)
    # each seed carries its own injected sampling seed (seed + 7) for every worker
    seeds = [[c["seed"] + 7] * CFG["n_workers"] for c in cfgs]
    np.testing.assert_array_equal(state.opt_state.hyperparams["seed"], seeds)
    step = jax.jit(exp._round_step(alg, 0.25))
    carry, met = step(inputs._replace(state=state))
    assert carry.state.round.tolist() == [1, 1]
    assert alg.traffic["bytes_sent"] == _expected_dgc_bytes(CFG, 0.25) == int(met["bytes"][0]) == int(met["bytes"][1])
    assert float(np.max(met["bookkeeping"])) <= exp.CRITERIA["bookkeeping_max"]
    assert met["sent"].shape == (2, CFG["n_workers"], 4)
    dense = exp._dense_algorithm(CFG)
    dstate = exp._init(exp._dense_algorithm, cfgs)
    _, dmet = jax.jit(exp._round_step(dense))(inputs._replace(state=dstate))
    n_params = sum(x.size for x in jax.tree.leaves(exp._params0(CFG)))
    assert int(dmet["bytes"][0]) == dense.traffic["bytes_sent"] == 4 * n_params


def test_batched_seeds_equal_separate_runs():
    """The seed axis is only a batch: seed 1 trained in a batch of two equals seed 1 alone."""
    both = exp.backend_probe(dict(CFG, n_seeds=2), "vmap", rounds=2, seed_index=1)
    alone = exp.backend_probe(dict(CFG, seed=CFG["seed"] + 1, n_seeds=1), "vmap", rounds=2)
    assert both.keys() == alone.keys()
    for k in both:
        np.testing.assert_allclose(both[k], alone[k], atol=1e-5, err_msg=k)


def test_backend_probe_is_finite_and_replicas_stay_identical():
    """vmap == mesh on this config is tests/test_backends_mesh.py's (8 devices, 1e-5)."""
    a = exp.backend_probe(CFG, "vmap", rounds=2)
    assert "dgc/params/w1" in a and "dense/loss" in a
    for k in a:
        assert np.all(np.isfinite(a[k])), k
    # replicas stay identical: both rules all-reduce/all-gather before stepping
    w = a["dgc/params/w1"]
    assert np.array_equal(w, np.broadcast_to(w[0], w.shape))


def test_claims_from_hand_made_measurements_are_pure():
    """claims() reads only the JSON measurements, config and CRITERIA (lists, str keys)."""
    seed = dict(n_params=100, dense_bytes=400, dgc_bytes_final=1, acc_dense=0.95, acc_dgc=0.949, ks=[100, 5],
                sent_counts=[{"value": [80, 130], "count": [3, 1]}, {"value": [5], "count": [4]}],
                estimated_counts=[{"value": [79, 120], "count": [1, 3]}, {"value": [5], "count": [4]}],
                book=0.0, replica_spread_max=0.0, dense_total=4e3, dgc_total=10.0, phases=[[10, 0.001]],
                steps=10, n_test=1000, seed=0)
    other = dict(seed, acc_dgc=0.96, sent_counts=[{"value": [79, 100], "count": [1, 3]}, {"value": [5], "count": [4]}])
    cfg = dict(exp.CONFIGS["quick"])
    got = {c.id: c for c in exp.claims({"seeds": [seed, other]}, cfg)}
    assert got["compression-ratio"].measured == 400 and got["compression-ratio"].passed
    assert got["accuracy-gap"].measured["per_seed"] == [0.1, -1.0] and got["accuracy-gap"].passed
    assert got["selected-count"].measured == 0.875 and not got["selected-count"].passed  # 79/100 < 0.8k
    assert got["threshold-estimate"].measured == 0.75  # leaf with k >= 100 only, seed 0
    assert got["bookkeeping-identity"].passed
    assert exp.claims({"seeds": [seed, other]}, cfg) == exp.claims({"seeds": [seed, other]}, cfg)
