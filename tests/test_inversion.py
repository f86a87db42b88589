"""Gradient-inversion toolkit (lgrad.analysis._inversion): numpy references of the
cosine and TV losses, PSNR, SSIM (scikit-image's default formula), the l1-ball
projection, label inference, and an end-to-end inversion of a linear layer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgrad.analysis._inversion import (
    gifd_radii,
    gifd_search,
    gradient_cosine_loss,
    infer_label,
    invert_gradients,
    matching_objective,
    project_l1_ball,
    psnr,
    ssim,
    total_variation,
)


def test_cosine_loss_matches_numpy_over_pytrees():
    rng = np.random.default_rng(0)
    a = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    b = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    fa = np.concatenate([a["b"], a["w"].ravel()])  # leaves in pytree order: b, w
    fb = np.concatenate([b["b"], b["w"].ravel()])
    ref = 1 - fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb))
    np.testing.assert_allclose(gradient_cosine_loss(a, b), ref, rtol=1e-6)
    np.testing.assert_allclose(gradient_cosine_loss(a, a), 0.0, atol=1e-6)
    np.testing.assert_allclose(gradient_cosine_loss(a, jax.tree.map(lambda x: -2.0 * x, a)), 2.0, rtol=1e-6)


def test_cosine_loss_finite_at_zero_gradient():
    z = {"w": jnp.zeros(5)}
    t = {"w": jnp.ones(5)}
    assert float(gradient_cosine_loss(z, t)) == pytest.approx(1.0)
    g = jax.grad(lambda w: gradient_cosine_loss({"w": w}, t))(jnp.zeros(5))
    assert np.all(np.isfinite(np.asarray(g)))


def test_total_variation_matches_numpy():
    x = np.random.default_rng(1).uniform(size=(2, 6, 5)).astype(np.float32)
    ref = np.mean(np.abs(np.diff(x, axis=-2))) + np.mean(np.abs(np.diff(x, axis=-1)))
    np.testing.assert_allclose(total_variation(x), ref, rtol=1e-6)
    assert float(total_variation(np.ones((4, 4)))) == 0.0
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        total_variation(np.ones(3))


def test_psnr_matches_numpy():
    rng = np.random.default_rng(2)
    x, r = rng.uniform(size=(3, 8, 8)), rng.uniform(size=(3, 8, 8))
    ref = [10 * np.log10(1.0 / np.mean((x[i] - r[i]) ** 2)) for i in range(3)]
    np.testing.assert_allclose(psnr(x, r), ref, rtol=1e-5)


def _ssim_numpy(x, y, win=7):
    """scikit-image's structural_similarity defaults (uniform window, sample covariance,
    data_range 1), written out with scipy's uniform_filter and the border crop."""
    from scipy.ndimage import uniform_filter

    x, y = x.astype(np.float64), y.astype(np.float64)
    f = lambda a: uniform_filter(a, size=win)  # noqa: E731
    cov = win * win / (win * win - 1)
    ux, uy = f(x), f(y)
    vx, vy, vxy = cov * (f(x * x) - ux * ux), cov * (f(y * y) - uy * uy), cov * (f(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[pad:-pad, pad:-pad].mean()


@pytest.mark.parametrize("shape,win", [((8, 8), 7), ((16, 12), 7), ((10, 10), 3)])
def test_ssim_matches_reference(shape, win):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=shape)
    y = np.clip(x + 0.2 * rng.normal(size=shape), 0, 1)
    np.testing.assert_allclose(ssim(x, y, win_size=win), _ssim_numpy(x, y, win), rtol=1e-4)
    np.testing.assert_allclose(ssim(x, x, win_size=win), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, y, win_size=50)


def test_l1_ball_projection():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(5, 4))
    for r in (0.5, 3.0, 100.0):
        p = np.asarray(project_l1_ball(jnp.asarray(v), r))
        assert np.abs(p).sum() <= r + 1e-5
        if np.abs(v).sum() <= r:
            np.testing.assert_allclose(p, v, rtol=1e-6)
        else:  # the projection: soft threshold with the theta that lands on the sphere
            from scipy.optimize import brentq

            theta = brentq(lambda t: np.maximum(np.abs(v) - t, 0).sum() - r, 0, np.abs(v).max())
            np.testing.assert_allclose(p, np.sign(v) * np.maximum(np.abs(v) - theta, 0), atol=1e-5)


def test_infer_label_single_example():
    logits = jnp.array([0.3, -1.0, 2.0, 0.1])
    for y in range(4):
        g = jax.grad(lambda b: -jax.nn.log_softmax(logits + b)[y])(jnp.zeros(4))
        assert int(infer_label(g)) == y


def test_invert_gradients_recovers_a_linear_layer_input():
    """One example through a dense layer with bias: the gradient reveals x (w-grad / b-grad)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.uniform(size=16), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(16, 3)) / 4, jnp.float32), "b": jnp.zeros(3)}

    def grads(p, xx):
        return jax.grad(lambda q: -jax.nn.log_softmax(xx @ q["w"] + q["b"])[1])(p)

    obj = matching_objective(lambda v: grads(params, v), grads(params, x), image_fn=lambda v: v.reshape(4, 4))
    res = invert_gradients(obj, jnp.full(16, 0.5), steps=800, learning_rate=0.02,
                           project=lambda v: jnp.clip(v, 0, 1))
    assert res.loss.shape == (800,) and float(res.loss[-1]) < float(res.loss[0])
    assert float(psnr(res.variables.reshape(4, 4), x.reshape(4, 4))) > 30.0
    with pytest.raises(ValueError, match="steps"):
        invert_gradients(obj, x, steps=0)
    with pytest.raises(ValueError, match="tv_weight"):
        matching_objective(lambda v: v, x, image_fn=lambda v: v, tv_weight=-1.0)


# ----------------------------------------------------------------------------- GIFD
def _duchi_numpy(v, r):
    """Duchi et al. (2008), Figure 1, written out in numpy (float64)."""
    v = np.asarray(v, np.float64).ravel()
    if np.abs(v).sum() <= r:
        return v
    if r == 0:  # the ball is {0} (Duchi et al. assume r > 0)
        return np.zeros_like(v)
    mu = np.sort(np.abs(v))[::-1]
    css = np.cumsum(mu)
    rho = np.nonzero(mu - (css - r) / np.arange(1, v.size + 1) > 0)[0][-1]
    theta = (css[rho] - r) / (rho + 1.0)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0.0)


@pytest.mark.parametrize("shape,r", [((7,), 0.3), ((4, 5), 2.0), ((3, 2, 2), 5.5), ((30,), 0.0), ((6,), 1e3)])
def test_l1_ball_projection_matches_duchi_numpy(shape, r):
    v = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    v[0] = v[1] if v.ndim == 1 else v[0]  # ties in |v|
    p = np.asarray(project_l1_ball(jnp.asarray(v), r))
    assert p.shape == v.shape
    np.testing.assert_allclose(p.ravel(), _duchi_numpy(v, r), atol=1e-5)
    assert np.abs(p).sum() <= r + 1e-4
    inside = v * (0.9 * r / max(np.abs(v).sum(), 1e-9))
    np.testing.assert_array_equal(np.asarray(project_l1_ball(jnp.asarray(inside), r)), inside)
    with pytest.raises(ValueError, match="radius"):
        project_l1_ball(jnp.asarray(v), -1.0)


def test_gifd_radii_keep_the_per_element_budget():
    assert gifd_radii([8192]) == [1000.0]
    np.testing.assert_allclose(gifd_radii([8192, 8192, 8192]), [1000.0, 4250.0, 7500.0])
    np.testing.assert_allclose(gifd_radii([32, 64]), [1000.0 * 32 / 8192, 7500.0 * 64 / 8192])
    with pytest.raises(ValueError, match="feature_sizes"):
        gifd_radii([])
    with pytest.raises(ValueError, match="first"):
        gifd_radii([4], first=2.0, last=1.0)


def _tiny_gifd_problem():
    """A 3-stage random generator (2 -> 6 -> 8 -> 16 pixels) and a dense-layer model."""
    keys = jax.random.split(jax.random.PRNGKey(7), 5)
    dense = lambda k, i, o: {"w": jax.random.normal(k, (i, o)) / np.sqrt(i), "b": jnp.zeros(o)}  # noqa: E731
    stages = [lambda p, h: jnp.tanh(h @ p["w"] + p["b"]), lambda p, h: jnp.tanh(h @ p["w"] + p["b"]),
              lambda p, h: jax.nn.sigmoid(h @ p["w"] + p["b"])]
    gp = [dense(keys[0], 2, 6), dense(keys[1], 6, 8), dense(keys[2], 8, 16)]
    model = dense(keys[3], 16, 3)
    grads = lambda x: jax.grad(lambda q: -jax.nn.log_softmax(x @ q["w"] + q["b"])[1])(model)  # noqa: E731
    x_true = jax.random.uniform(keys[4], (16,))  # not in the generator's range
    return stages, gp, grads, x_true


def test_gifd_search_reduces_the_matching_loss():
    stages, gp, grads, x_true = _tiny_gifd_problem()
    z0 = jnp.zeros(2)
    img = lambda x: x.reshape(4, 4)  # noqa: E731
    obj = matching_objective(grads, grads(x_true), image_fn=img)
    run = jax.jit(lambda z: gifd_search(grads, grads(x_true), stages, gp, z, radii=[1.0, 2.0], image_fn=img,
                                        latent_steps=60, feature_steps=60, learning_rate=0.05))
    res = run(z0)
    start = float(obj(stages[2](gp[2], stages[1](gp[1], stages[0](gp[0], z0)))))
    assert res.images.shape == (3, 16) and res.losses.shape == (3,) and res.skipped.shape == (3,)
    assert float(res.losses[0]) < start  # the latent search
    assert float(res.losses[2]) < float(res.losses[0])  # the feature searches go further
    assert int(res.best) == int(np.argmin(np.asarray(res.losses)))
    np.testing.assert_allclose(float(obj(res.image)), float(np.min(np.asarray(res.losses))), rtol=1e-5)
    np.testing.assert_allclose(res.latent_image, res.images[0])


def test_gifd_search_validates():
    stages, gp, grads, x_true = _tiny_gifd_problem()
    kw = dict(radii=[1.0, 2.0], image_fn=lambda x: x.reshape(4, 4), latent_steps=2, feature_steps=2)
    g = grads(x_true)
    with pytest.raises(ValueError, match="at least 2 stages"):
        gifd_search(grads, g, stages[:1], gp[:1], jnp.zeros(2), **{**kw, "radii": []})
    with pytest.raises(ValueError, match="stage_params"):
        gifd_search(grads, g, stages, gp[:2], jnp.zeros(2), **kw)
    with pytest.raises(ValueError, match="radii must have"):
        gifd_search(grads, g, stages, gp, jnp.zeros(2), **{**kw, "radii": [1.0]})
    with pytest.raises(ValueError, match="radii must be > 0"):
        gifd_search(grads, g, stages, gp, jnp.zeros(2), **{**kw, "radii": [1.0, 0.0]})
    with pytest.raises(ValueError, match="latent_steps"):
        gifd_search(grads, g, stages, gp, jnp.zeros(2), **{**kw, "latent_steps": 0})
    with pytest.raises(ValueError, match="feature_steps"):
        gifd_search(grads, g, stages, gp, jnp.zeros(2), **{**kw, "feature_steps": 0})
