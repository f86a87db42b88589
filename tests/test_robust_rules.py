"""lgrad.robust attacks, MoNNA (decentralized optax rule) and the MUD-HoG detector."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad import robust
from lgrad.distributed import comm, run_workers
from lgrad.robust import attacks, mudhog


def test_attacks_match_definitions():
    h = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(attacks.sign_flip(h), -h.mean(0), rtol=1e-6)
    np.testing.assert_allclose(attacks.alie(h), h.mean(0) + 1.5 * h.std(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(attacks.foe(h), -2.0 * h.mean(0), rtol=1e-6)
    np.testing.assert_allclose(attacks.alie(h, 0.3), h.mean(0) + 0.3 * h.std(0, ddof=1), rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        attacks.alie(h[:1])
    with pytest.raises(ValueError, match="shape"):
        attacks.sign_flip(h[0])
    y = np.array([0, 1, 7, 9])
    np.testing.assert_array_equal(attacks.label_flip(y, 10), [9, 8, 2, 0])
    np.testing.assert_array_equal(attacks.multi_label_flip(y, [1, 9], 7), [0, 7, 7, 7])
    np.testing.assert_array_equal(attacks.multi_label_flip(jnp.asarray(y), [1], 7), [0, 7, 7, 9])
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 16)), jnp.float32)
    u = attacks.unreliable(x, jax.random.PRNGKey(0), noise_std=0.3, blur=1)
    assert u.shape == x.shape and not np.allclose(u, x)
    assert float(u.min()) >= float(x.min()) - 1e-6 and float(u.max()) <= float(x.max()) + 1e-6
    g = attacks.gaussian_noise(jnp.zeros((1000,)), jax.random.PRNGKey(1), 0.1)
    assert 0.08 < float(jnp.std(g)) < 0.12


def test_line_search_picks_most_damaging_factor():
    h = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)) + 3.0, jnp.float32)
    agg = robust.mean  # undefended: the largest factor does the most damage
    vec, tau = attacks.line_search(attacks.foe, agg, h, 2, (0.5, 1.0, 4.0))
    assert float(tau) == 4.0
    np.testing.assert_allclose(vec, attacks.foe(h, 4.0), rtol=1e-6)
    # against trimmed mean with f=2, the chosen factor's damage is the max over the grid
    tm = functools.partial(robust.trimmed_mean, f=2)
    grid = (0.0, 0.5, 1.0, 2.0, 5.0)
    vec, tau = jax.jit(lambda hh: attacks.line_search(attacks.alie, tm, hh, 2, grid))(h)
    dmg = [float(jnp.linalg.norm(tm(jnp.concatenate([h, jnp.stack([attacks.alie(h, t)] * 2)])) - h.mean(0))) for t in grid]
    assert dmg[grid.index(float(tau))] == pytest.approx(max(dmg), rel=1e-5)


def _run_monna(tx, params, grads, n):
    def step(p, g):
        s = tx.init(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u)

    return run_workers(step, params, grads, n_workers=n)


def test_monna_step_matches_definition():
    n, f, d, lr, beta = 6, 1, 4, 0.1, 0.9
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    grads = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    out = _run_monna(robust.monna(lr, f=f, beta=beta), params, grads, n)
    half = np.asarray(params) - lr * (1 - beta) * np.asarray(grads)  # m_0 = 0
    for i in range(n):
        dist = ((half - half[i]) ** 2).sum(1)
        want = half[np.argsort(dist, kind="stable")[: n - f]].mean(0)
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-6)
    # beta = 0, f = 0, mean mixing: plain D-SGD averaging
    out0 = _run_monna(robust.monna(lr, f=0, beta=0.0), params, grads, n)
    np.testing.assert_allclose(out0, np.broadcast_to((np.asarray(params) - lr * np.asarray(grads)).mean(0), (n, d)), rtol=1e-5, atol=1e-6)


def test_monna_filters_byzantine_and_counts_bytes():
    n, d = 8, 3
    params = jnp.zeros((n, d))
    grads = jnp.ones((n, d))
    bad = lambda h: jnp.full((h.shape[1],), 1e6)  # noqa: E731
    # averaging is dragged far away; NNA and trimmed mean are not
    avg = _run_monna(robust.monna(0.1, f=2, beta=0.0, rule=robust.aggregator_rule(robust.mean), byzantine=(6, 7), attack=bad, attack_on="params"), params, grads, n)
    nna = _run_monna(robust.monna(0.1, f=2, beta=0.0, byzantine=(6, 7), attack=bad, attack_on="params"), params, grads, n)
    cwtm = _run_monna(robust.monna(0.1, f=2, beta=0.0, rule=robust.aggregator_rule(functools.partial(robust.trimmed_mean, f=2)), byzantine=(6, 7), attack=bad, attack_on="params"), params, grads, n)
    assert float(jnp.abs(avg[:6]).max()) > 1e4
    np.testing.assert_allclose(nna[:6], -0.1, rtol=1e-5)
    np.testing.assert_allclose(cwtm[:6], -0.1, rtol=1e-5)
    # NaN-sending attackers do not poison NNA
    nan_out = _run_monna(robust.monna(0.1, f=2, beta=0.0, byzantine=(6, 7), attack=lambda h: jnp.full((h.shape[1],), jnp.nan), attack_on="params"), params, grads, n)
    np.testing.assert_allclose(nan_out[:6], -0.1, rtol=1e-5)
    # updates-mode sign flip: byzantine rows = mean honest params + (-mean honest update)
    tx = robust.monna(0.1, f=2, beta=0.0, rule=robust.aggregator_rule(robust.mean), byzantine=(6, 7), attack=attacks.sign_flip)
    out = _run_monna(tx, params, grads, n)
    np.testing.assert_allclose(out[0], (6 * -0.1 + 2 * 0.1) / 8, rtol=1e-5)

    tx = robust.monna(0.1, f=1)

    def counted(p, g):
        with comm.counting() as sent:
            u, _ = tx.update(g, tx.init(p), p)
        return jnp.asarray(sent.bytes) + 0 * u.sum()

    assert int(run_workers(counted, params, grads, n_workers=n)[0]) == d * 4


def test_monna_backends_agree_and_bad_args():
    n = 8
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(n, 2, 2)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(n, 2, 2)), jnp.float32)}
    tx = robust.monna(0.05, f=2, byzantine=(0,), attack=attacks.alie)

    def step(p, g):
        u, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, u)

    a = run_workers(step, params, grads, n_workers=n, backend="vmap")
    b = run_workers(step, params, grads, n_workers=n, backend="mesh")
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        robust.monna(0.1, f=1, beta=1.5)
    with pytest.raises(ValueError, match="learning_rate"):
        robust.monna(-0.1, f=1)
    with pytest.raises(ValueError, match="byzantine"):
        robust.monna(0.1, f=1, byzantine=(1, 1))
    with pytest.raises(ValueError, match="attack_on"):
        robust.monna(0.1, f=1, attack_on="grads")


# ----------------------------------------------------------------------------- MUD-HoG
def test_clustering_blocks_match_sklearn():
    sk = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(10, 3)), rng.normal(size=(8, 3)) + 6, rng.normal(size=(3, 3)) * 20]).astype(np.float32)
    ours = np.asarray(mudhog.dbscan(jnp.asarray(x), 2.0, 3))
    ref = sk.DBSCAN(eps=2.0, min_samples=3).fit(x).labels_
    # same partition (labels up to renaming), same noise points
    np.testing.assert_array_equal(ours == -1, ref == -1)
    for a in set(ref[ref >= 0]):
        assert len(set(ours[ref == a])) == 1
    lab, _ = mudhog.kmeans2(jnp.asarray(x[:18]))
    km = sk.KMeans(2, n_init=10, random_state=0).fit(x[:18]).labels_
    assert abs(np.corrcoef(np.asarray(lab), km)[0, 1]) > 0.99
    high, gap = mudhog.largest_gap_split(jnp.array([0.0, 0.1, 0.2, 1.0, 1.1]))
    np.testing.assert_array_equal(high, [False, False, False, True, True])
    assert float(gap) == pytest.approx(0.8)


def test_mudhog_detects_sign_flip_and_noise():
    rng = np.random.default_rng(0)
    n, d = 30, 40
    truth = np.zeros(n, int)
    truth[:4], truth[4:8] = 1, 2
    base = rng.normal(size=d)
    state = mudhog.init(n, d)
    step = jax.jit(mudhog.update)
    for t in range(6):
        delta = base + 0.6 * rng.normal(size=(n, d))
        delta[truth == 1] *= -1
        delta[truth == 2] += 3.0 * rng.normal(size=((truth == 2).sum(), d))
        state, suspect = step(state, jnp.asarray(delta, jnp.float32))
        if t + 1 < 4:  # detection starts at round 4 (the authors' tao_0 = 3, rounds from 0)
            assert int(jnp.sum(suspect)) == 0 and bool(state.keep.all())
        if t + 1 == 4:  # suspected at round 4, confirmed (delay 2) at round 5
            assert int(jnp.sum(state.flags)) == 0
            assert set(np.asarray(suspect)[truth == 1]) == {1}
    flags = np.asarray(state.flags)
    assert set(flags[truth == 1]) == {1} and (flags[truth == 2] == 2).sum() >= 3, flags
    assert set(flags[truth == 2]) <= {2, 4} and not flags[truth == 0].any(), flags  # noise may end as unreliable
    agg = mudhog.aggregate(jnp.asarray(delta, jnp.float32), state.keep)
    keep = np.asarray(state.keep)
    assert not keep[flags == 1].any() and not keep[flags == 2].any() and keep[truth == 0].all()
    np.testing.assert_allclose(agg, delta[keep].mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="boolean"):
        mudhog.aggregate(jnp.asarray(delta, jnp.float32), state.flags)


def test_mudhog_flags_are_revoked_after_two_clean_rounds():
    rng = np.random.default_rng(2)
    n, d = 20, 30
    base = rng.normal(size=d)
    state = mudhog.init(n, d, window=1)  # short HoG = this round's change: client 0 turns clean at once
    step = jax.jit(mudhog.update)
    history = []
    for t in range(10):
        delta = base + 0.2 * rng.normal(size=(n, d))
        if t < 6:
            delta[0] *= -1
        state, _ = step(state, jnp.asarray(delta, jnp.float32))
        history.append(int(state.flags[0]))
    assert history[4] == 1  # suspect at rounds 4 and 5 -> confirmed at 5
    # clean from round 7: counter reset at 7, flag revoked at 8
    assert history[6] == 1 and history[7] == 0 and history[-1] == 0, history


def test_mudhog_unreliable_counter_decrements_and_unreliable_clients_are_kept():
    rng = np.random.default_rng(5)
    n, d = 10, 8
    base = rng.normal(size=d)
    low = rng.normal(size=d)  # client 1's direction while it is unreliable: far from the others
    cand = jnp.ones((n,), bool)
    cu, rel = jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool)
    seen = []
    for t in range(10):
        short = base + 0.01 * rng.normal(size=(n, d))
        if t < 3:
            short[1] = low
        else:  # the largest gap always splits off a lower group (no guard): another client's
            short[9] = low
        cu, rel = mudhog._unreliable(jnp.asarray(short, jnp.float32), cand, cu, rel, 2, 0.0)
        seen.append((int(cu[1]), bool(rel[1])))
    # +1 for three suspect rounds: flagged once the count is above delay = 2
    assert seen[:3] == [(1, False), (2, False), (3, True)], seen
    # clean: -1 per round, still flagged while > 0, unflagged the round after it reached 0
    assert [c for c, _ in seen[3:6]] == [2, 1, 0] and seen[5][1] and not seen[6][1], seen
    # in a whole round, unreliable clients stay in the aggregate
    state = mudhog.init(n, d)
    step = jax.jit(mudhog.update)
    for t in range(8):
        delta = base + 0.3 * rng.normal(size=(n, d))
        state, _ = step(state, jnp.asarray(delta, jnp.float32))
        rel = np.asarray(state.flags) == 4
        assert np.asarray(state.keep)[rel].all()


def test_mudhog_guards_are_options():
    rng = np.random.default_rng(1)
    n, d = 20, 30
    base = rng.normal(size=d)
    state = mudhog.init(n, d)
    step = jax.jit(lambda s, x: mudhog.update(s, x, **mudhog.GUARDS))
    for _ in range(8):
        state, _ = step(state, jnp.asarray(base + 0.2 * rng.normal(size=(n, d)), jnp.float32))
    assert int(jnp.sum(state.flags != 0)) == 0, np.asarray(state.flags)
    with pytest.raises(ValueError, match="unknown MUD-HoG option 'delays'"):
        mudhog.aggregator(delays=(2, 2, 4, 4))


def test_mudhog_targeted_stage_flags_the_drifting_minority():
    rng = np.random.default_rng(3)
    n, d = 24, 20
    base = rng.normal(size=d)
    drift = rng.normal(size=d)
    drift *= np.linalg.norm(base) / np.linalg.norm(drift)
    state = mudhog.init(n, d)
    # stage 2 (which runs first and also sees the drifting short HoGs) held off by its guard
    step = jax.jit(lambda s, x: mudhog.update(s, x, noise_ratio=1e9))
    for _ in range(9):
        delta = base + 0.3 * rng.normal(size=(n, d))
        delta[:4] = base + 0.8 * drift + 0.3 * rng.normal(size=(4, d))  # same norm class, rotated
        state, suspect = step(state, jnp.asarray(delta, jnp.float32))
        assert not np.asarray(state.keep)[np.asarray(suspect) == 3].any()  # suspects leave the aggregate at once
    flags = np.asarray(state.flags)
    assert set(flags[:4]) == {3}, flags  # 2 delay = 4 suspect rounds in a row: rounds 4-7


def test_mudhog_input_checks():
    n, d = 20, 30
    state = mudhog.init(n, d)
    with pytest.raises(ValueError, match="shape"):
        mudhog.update(state, jnp.zeros((n, d + 1)))
    with pytest.raises(ValueError, match="n_clients"):
        mudhog.init(1, 3)
