"""lgrad.train: the pure core ``scan_steps`` and the host driver ``run_loop`` agree."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad.train import TrainState, batch_sampler, fit, gradient_step, run_loop, scan_steps


def _step(c):
    return c * 0.9 + 1.0, {"c": c, "sq": c * c}


def _eval(c):
    return {"e": jnp.sum(c)}


def test_scan_steps_shapes_and_schedule():
    carry, hist, evals = jax.jit(lambda c: scan_steps(_step, c, 23, eval_every=5, eval_fn=_eval))(jnp.ones(2))
    assert hist["c"].shape == (23, 2) and evals["e"].shape == (4,)  # evals after 5, 10, 15, 20
    c = jnp.ones(2)
    for t in range(23):
        np.testing.assert_allclose(hist["c"][t], c, rtol=1e-6)
        c, _ = _step(c)
        if (t + 1) % 5 == 0 and t < 20:
            np.testing.assert_allclose(evals["e"][(t + 1) // 5 - 1], jnp.sum(c), rtol=1e-6)  # jit vs eager
    np.testing.assert_allclose(carry, c, rtol=1e-6)
    _, _, evals = scan_steps(_step, jnp.ones(2), 7, eval_fn=_eval)  # eval_every=0: once, at the end
    assert evals["e"].shape == (1,)
    _, hist, evals = scan_steps(_step, jnp.ones(2), 7)
    assert evals == {} and hist["c"].shape == (7, 2)


def test_scan_steps_vmaps_like_a_loop():
    batched = jax.vmap(lambda c: scan_steps(_step, c, 12, eval_every=4, eval_fn=_eval))(jnp.arange(6.0).reshape(3, 2))
    for i in range(3):
        one = scan_steps(_step, jnp.arange(6.0).reshape(3, 2)[i], 12, eval_every=4, eval_fn=_eval)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(jax.tree.map(lambda x: x[i], batched))):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def _least_squares(optimizer):
    """(step, carry, evaluate) of minibatch least squares on 64 fixed rows."""
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    data = (x, x @ jnp.array([1.0, -2.0, 0.5]))
    tx = optax.with_extra_args_support(optimizer)
    step = gradient_step(lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2), tx, batch_fn=batch_sampler(data, 8))
    carry = TrainState(jnp.zeros(3), tx.init(jnp.zeros(3)), jax.random.PRNGKey(3), jnp.zeros([], jnp.int32))
    return step, carry, lambda s: {"n": jnp.sum(s.params ** 2)}


def test_run_loop_equals_scan_steps_bitwise():
    step, carry, evaluate = _least_squares(optax.adam(0.05))
    res = run_loop(step, carry, steps=40, eval_fn=evaluate, eval_every=5, chunk_size=10, checkpoint=False)
    final, hist, evals = jax.jit(lambda c: scan_steps(step, c, 40, eval_every=5, eval_fn=evaluate))(carry)
    np.testing.assert_array_equal(res.history["loss"], hist["loss"])
    np.testing.assert_array_equal(res.evals["n"][1:], evals["n"])  # run_loop adds the eval at step 0
    for a, b in zip(jax.tree.leaves(res.state), jax.tree.leaves(final)):
        np.testing.assert_array_equal(a, b)


def test_fit_result_run_is_that_run_alone():
    starts = jnp.arange(6.0).reshape(3, 2)
    res = run_loop(jax.vmap(_step), starts, steps=9, eval_fn=jax.vmap(_eval), eval_every=3, checkpoint=False)
    for i in range(3):
        one = run_loop(_step, starts[i], steps=9, eval_fn=_eval, eval_every=3, checkpoint=False)
        got = res.run(i)
        np.testing.assert_allclose(got.state, one.state, rtol=1e-6)
        np.testing.assert_allclose(got.history["c"], one.history["c"], rtol=1e-6)
        np.testing.assert_allclose(got.evals["e"], one.evals["e"], rtol=1e-6)
        np.testing.assert_array_equal(got.eval_steps, one.eval_steps)


@pytest.mark.parametrize("eval_every, chunk_size", [(5, 10), (0, None), (7, 14)])
def test_run_loop_host_steps_matches_the_scan(eval_every, chunk_size):
    """host_steps=True (one compiled step called from Python) gives the same steps,
    history, evals and eval steps as the scanned chunks, tail included (23 steps)."""
    step, carry, evaluate = _least_squares(optax.sgd(0.05))
    kw = dict(steps=23, eval_fn=evaluate, eval_every=eval_every, chunk_size=chunk_size, checkpoint=False)
    scanned, hosted = run_loop(step, carry, **kw), run_loop(step, carry, host_steps=True, **kw)
    np.testing.assert_array_equal(hosted.eval_steps, scanned.eval_steps)
    np.testing.assert_allclose(hosted.history["loss"], scanned.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(hosted.evals["n"], scanned.evals["n"], rtol=1e-6)
    np.testing.assert_allclose(hosted.params, scanned.params, rtol=1e-6)


def test_scan_steps_rejects_traced_or_negative_counts():
    with pytest.raises(ValueError, match="num_steps must be an int >= 0"):
        scan_steps(_step, jnp.ones(2), -1)
    with pytest.raises(ValueError, match="eval_every must be an int >= 0"):
        scan_steps(_step, jnp.ones(2), 3, eval_every=1.5)


def test_fit_is_run_loop_of_gradient_step():
    loss = lambda p, b: jnp.sum((p - b) ** 2)  # noqa: E731
    a = fit(loss, jnp.zeros(3), optax.sgd(0.1), steps=9, data=jnp.arange(3.0), checkpoint=False)
    tx = optax.with_extra_args_support(optax.sgd(0.1))
    s0 = TrainState(jnp.zeros(3), tx.init(jnp.zeros(3)), jax.random.PRNGKey(0), jnp.zeros([], jnp.int32))
    b = run_loop(gradient_step(loss, tx, data=jnp.arange(3.0)), s0, steps=9, checkpoint=False)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    np.testing.assert_array_equal(a.params, b.params)
