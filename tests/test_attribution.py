"""lgrad.analysis.attribution against closed forms (linear, quadratic, one-hidden-layer ReLU), float64, 1e-6."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgrad.analysis import attribution as at

TOL = 1e-6


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _linear(d=5, k=3, n=4, seed=0):
    r = np.random.default_rng(seed)
    w, b, x = r.normal(size=(d, k)), r.normal(size=k), r.normal(size=(n, d))
    return (lambda p, x: x @ p["w"] + p["b"]), {"w": jnp.asarray(w), "b": jnp.asarray(b)}, jnp.asarray(x), w


def _quadratic(d=4, n=3, seed=1):
    r = np.random.default_rng(seed)
    a = r.normal(size=(d, d))
    a = a + a.T
    c = r.normal(size=d)
    apply = lambda p, x: 0.5 * jnp.einsum("ni,ij,nj->n", x, p["a"], x) + x @ p["c"]  # noqa: E731
    return apply, {"a": jnp.asarray(a), "c": jnp.asarray(c)}, jnp.asarray(r.normal(size=(n, d))), a, c


def _relu_net(d=6, h=8, n=5, seed=2):
    r = np.random.default_rng(seed)
    p = {"w": r.normal(size=(d, h)), "c": r.normal(size=h), "v": r.normal(size=h)}
    apply = lambda p, x: at.relu(x @ p["w"] + p["c"]) @ p["v"]  # noqa: E731
    return apply, jax.tree.map(jnp.asarray, p), jnp.asarray(r.normal(size=(n, d))), p


def test_gradient_family_on_a_linear_model():
    apply, params, x, w = _linear()
    target = jnp.array([0, 2, 1, 0])
    wt = w.T[np.asarray(target)]
    np.testing.assert_allclose(at.saliency(apply, params, x, target=target), np.abs(wt), atol=TOL)
    np.testing.assert_allclose(at.saliency(apply, params, x, target=target, abs=False), wt, atol=TOL)
    np.testing.assert_allclose(at.input_x_gradient(apply, params, x, target=target), wt * x, atol=TOL)
    base = jnp.full_like(x, 0.3)
    for method in at.IG_METHODS:
        ig = at.integrated_gradients(apply, params, x, target=target, baselines=base, n_steps=7, method=method)
        np.testing.assert_allclose(ig, wt * (x - 0.3), atol=TOL, err_msg=method)
    np.testing.assert_allclose(at.deeplift(apply, params, x, target=target, baselines=base), wt * (x - 0.3), atol=TOL)
    np.testing.assert_allclose(at.guided_backprop(apply, params, x, target=target), wt, atol=TOL)
    np.testing.assert_allclose(at.occlusion(apply, params, x, target=1, sliding_window_shapes=(1,)), w[:, 1] * x, atol=TOL)
    sg = at.smoothgrad(apply, params, x, jax.random.PRNGKey(0), target=target, stdevs=0.5)
    np.testing.assert_allclose(sg, wt, atol=TOL)


def test_integrated_gradients_on_a_quadratic_model():
    apply, params, x, a, c = _quadratic()
    b = jnp.asarray(np.random.default_rng(5).normal(size=x.shape))
    exact = (x - b) * ((x + b) @ a / 2 + c)  # the integrand is linear in alpha
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_middle"):
        ig = at.integrated_gradients(apply, params, x, baselines=b, n_steps=5, method=method)
        np.testing.assert_allclose(ig, exact, atol=TOL, err_msg=method)
        f = apply(params, x) - apply(params, b)
        np.testing.assert_allclose(ig.sum(1), f, atol=TOL)  # completeness
    n = 6
    for method, frac in (("riemann_left", (n - 1) / (2 * n)), ("riemann_right", (n + 1) / (2 * n))):
        ig = at.integrated_gradients(apply, params, x, baselines=b, n_steps=n, method=method)
        np.testing.assert_allclose(ig, (x - b) * ((b + frac * (x - b)) @ a + c), atol=TOL, err_msg=method)
    np.testing.assert_allclose(at.gradient(apply, params, x), x @ a + c, atol=TOL)


def test_integration_points_follow_captum():
    s, a = at.integration_points(5, "riemann_trapezoid")
    np.testing.assert_allclose(a, np.linspace(0, 1, 5))
    np.testing.assert_allclose(s, [0.125, 0.25, 0.25, 0.25, 0.125])
    s, a = at.integration_points(4, "riemann_left")
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75])
    s, a = at.integration_points(3, "gausslegendre")
    assert abs(s.sum() - 1) < 1e-12 and a.min() > 0 and a.max() < 1
    with pytest.raises(ValueError, match="method='simpson'"):
        at.integration_points(3, "simpson")


def test_smoothgrad_on_a_quadratic_is_the_gradient_at_the_mean_noise():
    apply, params, x, a, c = _quadratic()
    key = jax.random.PRNGKey(3)
    noise = 0.2 * jax.random.normal(key, (4,) + x.shape, x.dtype)
    sg = at.smoothgrad(apply, params, x, key, nt_samples=4, stdevs=0.2)
    np.testing.assert_allclose(sg, (x + noise.mean(0)) @ a + c, atol=TOL)
    sq = at.noise_tunnel(lambda z: at.gradient(apply, params, z), x, key, nt_samples=4, stdevs=0.2, nt_type="smoothgrad_sq")
    np.testing.assert_allclose(sq, np.mean([((x + e) @ a + c) ** 2 for e in noise], 0), atol=TOL)


def test_deeplift_and_guided_backprop_on_a_relu_net():
    apply, params, x, p = _relu_net()
    b = jnp.asarray(np.random.default_rng(7).normal(size=x.shape))
    h, h0 = np.asarray(x) @ p["w"] + p["c"], np.asarray(b) @ p["w"] + p["c"]
    m = (np.maximum(h, 0) - np.maximum(h0, 0)) / (h - h0)
    np.testing.assert_allclose(at.deeplift(apply, params, x, baselines=b), (x - b) * ((m * p["v"]) @ p["w"].T), atol=TOL)
    dl = at.deeplift(apply, params, x, baselines=b)
    np.testing.assert_allclose(dl.sum(1), apply(params, x) - apply(params, b), atol=TOL)  # summation to delta
    guided = np.maximum(p["v"] * (h > 0), 0) @ p["w"].T
    np.testing.assert_allclose(at.guided_backprop(apply, params, x), guided, atol=TOL)
    np.testing.assert_allclose(at.gradient(apply, params, x), (p["v"] * (h > 0)) @ p["w"].T, atol=TOL)


@pytest.mark.parametrize("d", [7, 8])
def test_occlusion_averages_window_differences_like_captum(d):
    apply, params, x, w = _linear(d=d, k=2, n=2)
    window, stride = 3, 2
    out = at.occlusion(apply, params, x, target=0, sliding_window_shapes=(window,), strides=stride, baselines=0.5)
    ref = np.zeros_like(np.asarray(x))
    count = np.zeros(d)
    for s in range(0, d, stride):  # captum: starts until the axis is covered, the last window cut off
        if s > 0 and s - stride + window >= d:
            break
        diff = ((np.asarray(x)[:, s : s + window] - 0.5) * w[s : s + window, 0]).sum(1)
        ref[:, s : s + window] += diff[:, None]
        count[s : s + window] += 1
    np.testing.assert_allclose(out, ref / np.maximum(count, 1), atol=TOL)
    assert count.min() >= 1  # every feature covered (d = 8: the window starting at 6 is cut off)
    with pytest.raises(ValueError, match="sliding_window_shapes"):
        at.occlusion(apply, params, x, sliding_window_shapes=(9,))


def _conv_like(n=2, hw=3, c=4, seed=4):
    """x (n, hw, hw, c) -> tapped activation relu(x W) -> sum(A * V) per example."""
    r = np.random.default_rng(seed)
    p = {"w": jnp.asarray(r.normal(size=(c, c))), "v": jnp.asarray(r.normal(size=(hw, hw, c)))}

    def apply(p, x):
        a = at.tap("feat", at.relu(x @ p["w"]))
        return jnp.sum(a * p["v"], axis=(1, 2, 3))

    return apply, p, jnp.asarray(r.normal(size=(n, hw, hw, c)))


def test_grad_cam_and_layer_gradient_closed_form():
    apply, p, x = _conv_like()
    act, grad = at.layer_gradient(apply, p, x, layer="feat")
    a = np.maximum(np.asarray(x) @ np.asarray(p["w"]), 0)
    np.testing.assert_allclose(act, a, atol=TOL)
    np.testing.assert_allclose(grad, np.broadcast_to(p["v"], a.shape), atol=TOL)
    cam = at.grad_cam(apply, p, x, layer="feat")
    np.testing.assert_allclose(cam, np.einsum("nhwc,c->nhw", a, np.asarray(p["v"]).mean((0, 1))), atol=TOL)
    with pytest.raises(ValueError, match="layer='nope'"):
        at.layer_gradient(apply, p, x, layer="nope")


def test_normgrad_is_the_virtual_identity_conv_weight_gradient():
    apply, p, x = _conv_like()

    def with_conv(w_loc):  # a 1x1 conv with its own (identity) weights at every location
        def model(p, x):
            a = at.relu(x @ p["w"])
            return jnp.sum(jnp.einsum("nhwc,hwcd->nhwd", a, w_loc) * p["v"], axis=(1, 2, 3))
        return model(p, x[:1])[0]

    eye = jnp.broadcast_to(jnp.eye(4), (3, 3, 4, 4))
    gw = jax.grad(with_conv)(eye)
    np.testing.assert_allclose(at.normgrad(apply, p, x[:1], layer="feat")[0], np.linalg.norm(gw, axis=(2, 3)), atol=TOL)
    outer = at.normgrad(apply, p, x[:1], layer="feat", variant="outer")[0]
    np.testing.assert_allclose(outer, np.linalg.norm(np.maximum(gw, 0), axis=(2, 3)), atol=TOL)
    act, grad = at.layer_gradient(apply, p, x, layer="feat")
    prod = at.normgrad(apply, p, x, layer="feat", variant="product")
    np.testing.assert_allclose(prod, np.linalg.norm(np.maximum(act * grad, 0), axis=-1), atol=TOL)


def test_meta_saliency_runs_after_one_sgd_step():
    apply = lambda p, x: jnp.stack([jnp.sum(at.tap("feat", x * p["s"]), axis=(1, 2)), jnp.zeros(x.shape[0])], 1)  # noqa: E731
    p = {"s": jnp.asarray(2.0)}
    x = jnp.ones((1, 2, 3))
    out = at.meta_saliency(apply, p, x, jnp.array([0]), layer="feat", learning_rate=1e-4)
    assert out.shape == (1, 2) and np.all(np.isfinite(out))


@pytest.mark.parametrize("method", at.LFA_METHODS)
def test_lfa_recovers_a_linear_function(method):
    r = np.random.default_rng(0)
    w, x0 = jnp.asarray(r.normal(size=6)), jnp.asarray(r.uniform(0.5, 1.5, size=6))
    f = lambda x: x @ w + 0.7  # noqa: E731
    g = at.explain(method, f, x0, jax.random.PRNGKey(1), n_samples=200)
    expected = w * x0 if method in ("lime", "kernelshap", "occlusion", "integrated_gradients", "gradient_x_input") else w
    np.testing.assert_allclose(at.lfa_attribution(method, g, x0), expected, atol=TOL)
    nb = at.neighbourhood(method, f, x0, jax.random.PRNGKey(2), n_samples=50)
    assert float(at.lfa_loss(f, nb, g)) < 1e-12


def test_lfa_validates_method():
    with pytest.raises(ValueError, match="method='shap'"):
        at.neighbourhood("shap", lambda x: x.sum(), jnp.ones(3), jax.random.PRNGKey(0))


def test_level_set_step_is_orthogonal_and_traversal_keeps_confidence():
    r = np.random.default_rng(3)
    j, v = jnp.asarray(r.normal(size=(4, 10))), jnp.asarray(r.normal(size=(4, 10)))
    d = at.orthogonal_step(j, v)
    np.testing.assert_allclose(np.sum(d * j, 1), 0, atol=TOL)
    w = jnp.asarray(r.normal(size=(10, 3)))
    apply = lambda p, x: x @ p  # noqa: E731
    src, tgt = jnp.asarray(r.uniform(size=(4, 10))), jnp.asarray(r.uniform(size=(4, 10)))
    lab = jnp.argmax(src @ w, 1)
    res = at.level_set_traversal(apply, w, src, tgt, lab, jax.random.PRNGKey(0), steps=20, pthresh=0.05)
    assert res.confidence.shape == (20, 4)
    assert np.all(np.asarray(res.p0 - res.confidence[-1]) < 0.05)
    assert float(res.cosine.max()) < 1e-6


def _toy_linear_transformer():
    r = np.random.default_rng(9)
    p = {"a": jnp.asarray(r.normal(size=(5, 5))), "b": jnp.asarray(r.normal(size=(5, 5))), "u": jnp.asarray(r.normal(size=5))}

    def apply(p, x):  # x (n, T, 5): two linear "layers" with named outputs
        h = at.tap("mlp0", x @ p["a"])
        h = h + at.tap("mlp1", h @ p["b"])
        return h.sum(1) @ p["u"]

    return apply, p


def test_patching_methods_agree_on_a_linear_toy():
    apply, p = _toy_linear_transformer()
    r = np.random.default_rng(1)
    clean, corr = jnp.asarray(r.normal(size=(3, 4, 5))), jnp.asarray(r.normal(size=(3, 4, 5)))
    metric = lambda out: out  # noqa: E731
    for layer, per in itertools.product(("mlp0", "mlp1"), (False, True)):
        act = at.activation_patching(apply, p, clean, corr, layer=layer, metric=metric, per_position=per)
        att = at.attribution_patching(apply, p, clean, corr, layer=layer, metric=metric, per_position=per)
        rel = at.relp_patching(apply, p, clean, corr, layer=layer, metric=metric, per_position=per)
        np.testing.assert_allclose(att, act, atol=TOL)
        np.testing.assert_allclose(rel, act, atol=TOL)


def test_relp_rules_keep_values_and_change_gradients():
    x = jnp.linspace(-2, 2, 9)
    for fn in (at.gelu, at.silu):
        with at.rules("relp"):
            y, g = fn(x), jax.grad(lambda v: jnp.sum(fn(v)))(x)
        np.testing.assert_allclose(y, fn(x), atol=TOL)
        np.testing.assert_allclose(g, fn(x) / jnp.where(x == 0, 1e-6, x), atol=1e-5)
    scale, bias = jnp.ones(9), jnp.zeros(9)
    with at.rules("relp"):
        ln = at.layer_norm(x[None], scale, bias)
    np.testing.assert_allclose(ln, at.layer_norm(x[None], scale, bias), atol=TOL)
    with pytest.raises(ValueError, match="name='lrp'"):
        with at.rules("lrp"):
            pass


def test_attributions_jit_and_vmap():
    apply, params, x, w = _linear()
    f = jax.jit(lambda x: at.integrated_gradients(apply, params, x, target=0, n_steps=4))
    np.testing.assert_allclose(f(x), w[:, 0] * x, atol=TOL)
    per = jax.vmap(lambda xi: at.input_x_gradient(apply, params, xi[None], target=1)[0])(x)
    np.testing.assert_allclose(per, w[:, 1] * x, atol=TOL)
