"""Every lgrad.optim transform, checked the same way (see transform_table.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transform_table import ENTRIES, Entry

IDS = [e.name for e in ENTRIES]


def make(entry: Entry, **overrides) -> optax.GradientTransformation:
    tx = entry.factory(**{**entry.kwargs, **overrides})
    if entry.scale_lr is not None:
        tx = optax.chain(tx, optax.scale(-entry.scale_lr))
    return tx


def problem(dtype=jnp.float32, seed=0, d=6):
    """A small ill-conditioned least-squares problem with a pytree of two leaves."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(12, d)) / np.sqrt(d)
    b = rng.normal(size=(12,))
    params = {"w": jnp.asarray(rng.normal(size=(d - 2,)), dtype), "b": jnp.asarray(rng.normal(size=(2,)), dtype)}

    def loss(p):
        x = jnp.concatenate([p["w"], p["b"]]).astype(jnp.float32 if dtype == jnp.bfloat16 else dtype)
        r = jnp.asarray(a, x.dtype) @ x - jnp.asarray(b, x.dtype)
        return 0.5 * jnp.sum(r * r)

    return params, loss, a, b


def run(tx, params, loss, steps, jit=True):
    state = tx.init(params)
    upd = jax.jit(tx.update) if jit else tx.update
    for _ in range(steps):
        g = jax.grad(loss)(params)
        u, state = upd(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_jit_matches_eager(entry):
    params, loss, _, _ = problem()
    p_jit, _ = run(make(entry), params, loss, 5, jit=True)
    p_eager, _ = run(make(entry), params, loss, 5, jit=False)
    for k in params:
        np.testing.assert_allclose(p_jit[k], p_eager[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inject_hyperparams(entry):
    params, loss, _, _ = problem()
    kwargs = dict(entry.kwargs)
    injected = optax.inject_hyperparams(entry.factory)(**kwargs)
    if entry.scale_lr is not None:
        injected = optax.chain(injected, optax.scale(-entry.scale_lr))
    p_inj, state = run(injected, params, loss, 5)
    p_dir, _ = run(make(entry), params, loss, 5)
    for k in params:
        np.testing.assert_allclose(p_inj[k], p_dir[k], rtol=1e-5, atol=1e-6)
    # the hyperparameters really live in the state and can be changed there
    inner = state[0] if entry.scale_lr is not None else state
    assert set(inner.hyperparams) >= {k for k, v in kwargs.items() if isinstance(v, float)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_dtype_preserved(entry, dtype):
    params, loss, _, _ = problem(dtype)
    tx = make(entry)
    state = tx.init(params)
    g = jax.grad(loss)(params)
    u, state = jax.jit(tx.update)(g, state, params)
    for k in params:
        assert u[k].dtype == dtype, (k, u[k].dtype)
        assert bool(jnp.all(jnp.isfinite(u[k].astype(jnp.float32))))
    new = optax.apply_updates(params, u)
    assert all(new[k].dtype == dtype for k in params)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_converges_on_quadratic(entry):
    params, loss, a, b = problem()
    best = 0.5 * float(np.sum((a @ np.linalg.lstsq(a, b, rcond=None)[0] - b) ** 2))
    start = float(loss(params))
    final, _ = run(make(entry), params, loss, entry.converge_steps)
    assert float(loss(final)) - best <= 1e-2 * (start - best)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_matches_numpy_reference(entry):
    if entry.reference is None:
        pytest.skip("no numpy reference")
    with jax.enable_x64(True):
        params, loss, a, b = problem(jnp.float64)
        tx = make(entry)
        state = tx.init(params)
        update = jax.jit(tx.update)
        traj = []
        p = params
        for _ in range(100):
            u, state = update(jax.grad(loss)(p), state, p)
            p = optax.apply_updates(p, u)
            traj.append(np.concatenate([np.asarray(p["w"]), np.asarray(p["b"])]))
    x0 = np.concatenate([np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)])
    want = entry.reference(lambda x: a.T @ (a @ x - b), x0, 100, **(entry.ref_kwargs or entry.kwargs))
    np.testing.assert_allclose(np.asarray(traj), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bad_arguments_raise(entry):
    for bad in entry.bad_args:
        with pytest.raises(ValueError) as info:
            entry.factory(**{**entry.kwargs, **bad})
        (name,) = bad
        assert name in str(info.value), (bad, str(info.value))
