"""one-byte-zo on lgrad.federated: worker_algorithm(lgrad.optim.mezo) reproduces the
hand-written worker loop it replaced, counts 1 byte in 1 collective, and its probe reports
both codecs (vmap == mesh is tests/test_backends_mesh.py's)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import one_byte_zo as exp
from lgrad.distributed import make_program
from lgrad.engine.config import validate_config
from lgrad.optim import mezo

CFG = dict(exp.CONFIGS["quick"], **exp.SMOKE)


def test_configs_share_keys_and_limits():
    assert exp.CONFIGS["quick"].keys() == exp.CONFIGS["full"].keys()
    assert set(exp.LIMITS) <= set(exp.CONFIGS["quick"])
    for mode in ("quick", "full"):
        validate_config(exp.CONFIGS[mode], exp.LIMITS, check=exp.check_config, available=2**40)
    with pytest.raises(ValueError, match="backend"):
        validate_config(dict(CFG, backend="auto"), exp.LIMITS, available=2**40)
    with pytest.raises(ValueError, match="n_samples=2 must be >= n_workers=4"):
        exp.check_config(dict(CFG, n_samples=2))


@pytest.mark.parametrize("codec,bytes_", [("one_byte", 1), ("float", 4)])
def test_traffic_and_collective_calls(codec, bytes_):
    problem = exp._problem(CFG)
    data = exp._client_data(CFG, problem)
    res, sent, calls = exp._train(CFG, codec, data, exp._full_loss(problem), steps=3)
    assert sent == bytes_ * CFG["samples_per_worker"] and calls == 1
    np.testing.assert_array_equal(res.history["bytes"], float(sent))
    w = np.asarray(res.state.params["w"])
    assert all(w[i].tobytes() == w[0].tobytes() for i in range(CFG["n_workers"]))


def test_port_equals_the_hand_written_loop():
    """The pre-port experiment's own worker loop (make_program + mezo), bit for bit."""
    steps, n, bsz = 20, CFG["n_workers"], CFG["batch_per_worker"]
    problem = exp._problem(CFG)
    data, full_loss = exp._client_data(CFG, problem), exp._full_loss(problem)
    ported, _, _ = exp._train(CFG, "one_byte", data, full_loss, steps=steps)

    xs, ys = (jnp.asarray(a) for a in data.arrays)
    m = xs.shape[1]
    tx = mezo(CFG["learning_rate"], eps=CFG["eps"], num_samples=CFG["samples_per_worker"], seed=CFG["seed"] + 1,
              axis_name="workers", codec="one_byte", codec_scale=CFG["codec_scale"])

    def worker(p, s, xw, yw, key):
        idx = jax.random.randint(key, (bsz,), 0, m)
        u, s = tx.update(None, s, p, loss_fn=lambda q: exp._loss(q, (xw[idx], yw[idx])))
        return optax.apply_updates(p, u), s

    prog = jax.jit(make_program(worker, n_workers=n, in_axes=(0, 0, 0, 0, 0)))
    p = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), exp._params0(CFG))
    s = jax.vmap(tx.init)(p)
    key = jax.random.PRNGKey(CFG["seed"] + 2)
    for t in range(steps):
        p, s = prog(p, s, xs, ys, jax.random.split(jax.random.fold_in(key, t), n))
    np.testing.assert_array_equal(np.asarray(p["w"]), np.asarray(ported.state.params["w"]))


def test_backend_probe_reports_both_codecs():
    """vmap == mesh on this config is tests/test_backends_mesh.py's (8 devices, 1e-5)."""
    cfg = dict(exp.CONFIGS["quick"], **exp.PROBE)
    a = exp.backend_probe(cfg, "vmap", rounds=2)
    assert {"float/params/w", "one_byte/loss"} <= a.keys()
    assert all(np.all(np.isfinite(v)) for v in a.values())


def test_claims_from_hand_made_measurements():
    """``claims`` alone, on measurements as read back from JSON."""
    run = lambda final, bytes_, identical=True: dict(  # noqa: E731
        final=final, identical=identical, bytes_per_step=bytes_, bytes_history_max=bytes_, calls=1, skipped=0)
    m = {"mean_cosine": 0.97, "cosine_counts": [1, 4], "cosine_curve": [0.1, 0.31234], "init_loss": 10.0,
         "least_squares_loss": 0.01, "runs": {"float": run(0.02, 4.0), "one_byte": run(0.0205, 1.0)}}
    out = {c.id: c for c in exp.claims(m, CFG)}
    assert out["spsa-cosine"].passed and out["spsa-cosine"].note.endswith("{1: 0.1, 4: 0.3123}")
    assert out["bitwise-identical"].passed and out["one-byte-vs-float"].passed
    assert out["one-byte-vs-float"].measured == pytest.approx(0.025)
    assert out["bytes-per-step"].passed and out["bytes-per-step"].target == "== 1 (1 per sample)"
    m["runs"]["one_byte"] = run(0.03, 4.0, identical=False)
    out = {c.id: c for c in exp.claims(m, CFG)}
    assert not any(out[k].passed for k in ("bitwise-identical", "one-byte-vs-float", "bytes-per-step"))
