"""diffGrad specifics beyond the shared table."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lgrad.optim import ScaleByDiffGradState, diffgrad, scale_by_diffgrad


def test_first_step_closed_form():
    # t = 1, g_prev = 0: m = (1-b1) g, v = (1-b2) g^2, xi = sigmoid(|g|).
    g = jnp.array([0.5, -2.0, 0.0])
    b1, b2, eps = 0.9, 0.999, 1e-8
    u, state = scale_by_diffgrad(b1, b2, eps).update(g, scale_by_diffgrad().init(g))
    m, v = (1 - b1) * np.asarray(g), (1 - b2) * np.asarray(g) ** 2
    xi = 1 / (1 + np.exp(-np.abs(np.asarray(g))))
    want = np.sqrt(1 - b2) / (1 - b1) * xi * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(u, want, rtol=1e-6)
    assert isinstance(state, ScaleByDiffGradState) and int(state.count) == 1
    np.testing.assert_array_equal(state.prev_grad, g)


def test_friction_damps_steady_gradients():
    # With a constant gradient xi -> sigmoid(0) = 0.5 after the first step.
    tx = scale_by_diffgrad()
    g = jnp.ones(2)
    s = tx.init(g)
    _, s = tx.update(g, s)
    u2, _ = tx.update(g, s)
    u2_const, _ = scale_by_diffgrad(constant_friction=True).update(g, s)
    np.testing.assert_allclose(u2, u2_const, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.floats(-1e3, 1e3, allow_nan=False), st.floats(-1e3, 1e3, allow_nan=False))
def test_friction_in_range_and_finite(g0, g1):
    tx = scale_by_diffgrad()
    s = tx.init(jnp.zeros(()))
    u0, s = tx.update(jnp.asarray(g0, jnp.float32), s)
    u1, s = tx.update(jnp.asarray(g1, jnp.float32), s)
    assert np.isfinite(float(u0)) and np.isfinite(float(u1))
    # |u| <= step factor * |m| / (sqrt v + eps) and xi in [0.5, 1)
    assert abs(float(u1)) <= 1.0 / (1 - 0.9**2) * np.sqrt(1 - 0.999**2) / np.sqrt(1 - 0.999) + 1e-3


@pytest.mark.parametrize("bad, name", [(dict(learning_rate=-1.0), "learning_rate"), (dict(b1=1.0), "b1"),
                                        (dict(b2=1.2), "b2"), (dict(eps=0.0), "eps"),
                                        (dict(learning_rate=float("inf")), "learning_rate"),
                                        (dict(weight_decay=-1e-4), "weight_decay")])
def test_validation_names_parameter(bad, name):
    with pytest.raises(ValueError, match=name):
        diffgrad(**bad)


def test_schedule_learning_rate_and_weight_decay_is_l2():
    # L2 decay enters the gradient: with zero loss gradient the step still shrinks params.
    tx = diffgrad(optax.constant_schedule(0.1), weight_decay=0.5)
    p = {"w": jnp.ones(3)}
    s = tx.init(p)
    u, s = tx.update({"w": jnp.zeros(3)}, s, p)
    assert bool(jnp.all(u["w"] < 0))


def test_composes_with_multisteps_and_masked():
    tx = optax.MultiSteps(diffgrad(0.1), every_k_schedule=2)
    p = jnp.ones(3)
    s = tx.init(p)
    u, s = tx.update(jnp.ones(3), s, p)
    np.testing.assert_array_equal(u, 0.0)
    u, s = tx.update(jnp.ones(3), s, p)
    assert bool(jnp.all(u < 0))
    masked = optax.masked(diffgrad(0.1), {"a": True, "b": False})
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    u, _ = masked.update(params, masked.init(params), params)
    assert bool(jnp.all(u["a"] < 0)) and bool(jnp.all(u["b"] == 1.0))
