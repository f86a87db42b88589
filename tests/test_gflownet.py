"""lgrad.gflownet: exact flows on a tiny DAG give zero loss for TB / DB / FL-DB; the
FL-DB reparametrisation equals DB; environments, rollouts and the exact hypergrid
distribution against plain enumeration."""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgrad import gflownet as gfn


@pytest.fixture(scope="module")
def exact():
    with jax.enable_x64(True):
        children, energy = gfn.tiny_dag(seed=3)
        yield gfn.exact_flow_batch(children, energy), children, energy


def test_exact_flows_give_zero_loss_for_every_objective(exact):
    b, _, _ = exact
    with jax.enable_x64(True):
        a = {k: jnp.asarray(v) for k, v in b.items()}
        tb = gfn.trajectory_balance(a["log_z"], a["log_pf"], a["log_pb"], a["log_reward"], a["mask"])
        db = gfn.detailed_balance(a["log_flow"], a["log_pf"], a["log_pb"], a["log_reward"], a["mask"], a["done"])
        fl = gfn.forward_looking_db(a["log_flow_tilde"], a["log_pf"], a["log_pb"], a["log_r"], a["mask"], a["done"])
        fl_code = gfn.forward_looking_db(
            a["log_flow_tilde"], a["log_pf"], a["log_pb"], a["log_r"], a["mask"], a["done"], fix_terminal=False
        )
    for loss in (tb, db, fl, fl_code):
        assert float(loss) < 1e-12
    assert b["mask"].sum() < b["mask"].size  # some trajectories are padded


def test_exact_policy_samples_proportionally_to_reward(exact):
    b, children, energy = exact
    leaves = [s for s in range(len(children)) if not children[s]]
    target = np.exp(-energy[leaves]) / np.exp(-energy[leaves]).sum()
    got = np.array([b["path_prob"][b["leaf"] == x].sum() for x in leaves])
    np.testing.assert_allclose(got, target, atol=1e-12)
    np.testing.assert_allclose(b["path_prob"].sum(), 1.0, atol=1e-12)


def test_wrong_flows_give_positive_loss(exact):
    b, _, _ = exact
    with jax.enable_x64(True):
        a = {k: jnp.asarray(v) for k, v in b.items()}
        bad = a["log_flow"].at[:, 1].add(0.3)
        assert float(gfn.detailed_balance(bad, a["log_pf"], a["log_pb"], a["log_reward"], a["mask"], a["done"])) > 1e-3
        assert float(gfn.trajectory_balance(a["log_z"] + 0.1, a["log_pf"], a["log_pb"], a["log_reward"], a["mask"])) > 1e-3
        badt = a["log_flow_tilde"].at[:, 1].add(0.3)
        assert float(gfn.forward_looking_db(badt, a["log_pf"], a["log_pb"], a["log_r"], a["mask"], a["done"])) > 1e-3


def test_fl_db_is_db_under_the_reparametrisation():
    """log F = log F~ - E turns the FL-DB residual into the DB residual on non-terminal transitions."""
    rng = np.random.default_rng(0)
    B, T = 4, 5
    e = rng.normal(size=(B, T + 1))
    lft = rng.normal(size=(B, T + 1))
    lpf, lpb = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    mask, done = np.ones((B, T), bool), np.zeros((B, T), bool)
    log_r = -(e[:, 1:] - e[:, :-1])
    fl = gfn.forward_looking_residuals(lft, lpf, lpb, log_r, mask, done)
    db = gfn.detailed_balance_residuals(lft - e, lpf, lpb, np.zeros(B), mask, done)
    np.testing.assert_allclose(np.asarray(fl), np.asarray(db), atol=1e-5)


def test_fix_terminal_option_differs_only_at_terminal_transitions():
    rng = np.random.default_rng(1)
    B, T = 3, 4
    args = [rng.normal(size=(B, T + 1)), rng.normal(size=(B, T)), rng.normal(size=(B, T)), rng.normal(size=(B, T))]
    mask, done = np.ones((B, T), bool), np.zeros((B, T), bool)
    done[:, -1] = True
    a = np.asarray(gfn.forward_looking_residuals(*args, mask, done, fix_terminal=True))
    b = np.asarray(gfn.forward_looking_residuals(*args, mask, done, fix_terminal=False))
    np.testing.assert_allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    np.testing.assert_allclose(a[:, -1] - b[:, -1], args[0][:, -1], atol=1e-5)


def test_hypergrid_rollouts_and_exact_distribution():
    env = gfn.hypergrid(height=4, ndim=2, r0=0.1)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    states = gfn.hypergrid_states(4, 2)

    def policy(f):  # a fixed random policy indexed by the state's coordinates
        idx = jnp.argmax(f[:4]) * 4 + jnp.argmax(f[4:8])
        return logits[idx]

    traj = gfn.sample_trajectories(jax.random.PRNGKey(0), env, policy, 4000)
    assert traj.states.shape == (4000, env.max_len + 1, 3)
    assert bool(jnp.all(traj.done.sum(1) == 1)) and bool(jnp.all(traj.states[:, -1, 2] == 1))
    assert bool(jnp.all(traj.mask.sum(1) == traj.states[:, -1, :2].sum(1) + 1))
    masks = jax.vmap(env.forward_mask)(jnp.asarray(states))
    lpf = gfn.masked_log_softmax(logits, masks)
    p = np.asarray(gfn.hypergrid_terminal_distribution(lpf, 4, 2))
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-5)
    final = np.asarray(traj.states[:, -1, 0] * 4 + traj.states[:, -1, 1])
    emp = np.bincount(final, minlength=16) / len(final)
    assert np.abs(emp - p).sum() < 0.12  # sampling noise of 4000 draws over 16 cells


def test_hypergrid_reward_modes():
    lr = np.asarray(gfn.hypergrid_log_reward(jnp.asarray(gfn.hypergrid_states(8, 2)[:, :2]), height=8, r0=1e-3, r1=0.5, r2=2.0))
    r = np.exp(lr).reshape(8, 8)
    assert np.isclose(r[0, 0], 1e-3 + 0.5) and np.isclose(r[3, 3], 1e-3)
    assert np.isclose(r[1, 1], 1e-3 + 0.5 + 2.0) and np.isclose(r[6, 6], 2.501)


def test_set_env_terms_and_top_rewards():
    e = gfn.set_energies(6, n_values=3, seed=0)
    env = gfn.set_env(e, set_size=3)
    traj = gfn.sample_trajectories(jax.random.PRNGKey(1), env, lambda f: jnp.zeros(6), 8, explore=0.5)
    assert bool(jnp.all(traj.states[:, -1].sum(1) == 3)) and bool(jnp.all(traj.done[:, -1]))

    def apply(feats):
        return jnp.zeros(feats.shape[:-1] + (6,)), jnp.zeros(feats.shape[:-1] + (6,)), jnp.zeros(feats.shape[:-1])

    t = gfn.trajectory_terms(env, apply, traj)
    np.testing.assert_allclose(np.asarray(t["log_r"].sum(1)), np.asarray(t["log_reward"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(t["log_pf"][:, 0]), -np.log(6), atol=1e-5)
    brute = sorted((math.exp(-sum(e[list(c)])) for c in itertools.combinations(range(6), 3)), reverse=True)[:5]
    np.testing.assert_allclose(gfn.set_top_rewards(e, 3, k=5), brute, rtol=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: gfn.hypergrid(height=1),
        lambda: gfn.hypergrid(r0=0.0),
        lambda: gfn.set_env(np.zeros(4), set_size=5),
        lambda: gfn.forward_looking_db(np.zeros((2, 4)), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)),
                                       np.ones((2, 3), bool), np.zeros((2, 3), bool), fix_terminal=1),
        lambda: gfn.detailed_balance(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2),
                                     np.ones((2, 3), bool), np.zeros((2, 3), bool)),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(call):
    with pytest.raises(ValueError) as err:
        call()
    assert "\n" not in str(err.value)


def test_flgfn_claims_from_measurements():
    """flgfn-credit's claims follow from the stored curves and CRITERIA only: steps to
    L1 < 0.1 / to the top-100 threshold per seed, a DB seed that never reaches = budget."""
    from experiments import flgfn_credit as fl

    cfg = {**fl.CONFIGS["quick"], "n_seeds": 2, "grid_steps": 75, "set_steps": 75}
    steps = [25, 50, 75]
    m = {"exact": {"TB": 0.0, "DB": 1e-30},
         "grid": {"steps": steps, "db": {"l1": [[0.5, 0.5], [0.2, 0.05], [0.05, 0.01]], "sampled_l1": [0.06, 0.02]},
                  "fl_db": {"l1": [[0.5, 0.09], [0.05, 0.01], [0.01, 0.01]], "sampled_l1": [0.02, 0.02]}},
         "set": {"optimum": 10.0, "steps": steps, "db": {"curves": [[1.0, 1.0], [2.0, 8.0], [3.0, 9.0]]},
                 "fl_db": {"curves": [[1.0, 1.0], [7.5, 7.0], [9.0, 8.0]]}}}  # threshold 7.5
    c = {x.id: x for x in fl.claims(m, cfg)}
    assert c["exact-flows-zero-loss"].passed
    g = c["hypergrid-fl-db-faster"]
    assert g.passed and g.measured["fl_db_steps"] == [50.0, 25.0] and g.measured["db_steps"] == [75.0, 50.0]
    s = c["set-fl-db-first"]  # FL-DB at 50, 75 (mean 62.5); DB never, 50: censored mean (75 + 50) / 2, not faster
    assert not s.passed and s.measured["fl_db_steps"] == [50.0, 75.0] and s.measured["db_mean_censored"] == 62.5
    assert s.measured["db_steps"][0] == "nan"  # a Claim stores measured as JSON
    m["set"]["fl_db"]["curves"][1][1] = 7.6  # second FL-DB seed at 50: mean 50 < 62.5
    assert fl.claims(m, cfg)[2].passed
    m["grid"]["fl_db"]["l1"][2][0] = m["grid"]["fl_db"]["l1"][1][0] = 0.5  # one FL-DB seed never reaches
    assert fl.claims(m, cfg)[1].passed is False
