"""dsd-locality: the DSD generator's statistics, the padded (masked) models equal the
unpadded ones, and the config checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import dsd_locality as dsd


def _w(d, D=None, seed=0):
    w = np.random.default_rng(seed).normal(size=d)
    w = w / np.linalg.norm(w)
    return jnp.asarray(np.concatenate([w, np.zeros((D or d) - d)]), jnp.float32)


@pytest.mark.parametrize("noise_scale", [1.0, 0.5])  # s^2 = 1/k (the paper's scale) and the experiment's 0.25/k
def test_generator_statistics(noise_scale):
    """Balanced labels; selection-free moments: E[y sum_i <x_i, w*>] = 1, E[sum_i <x_i, w*>^2]
    = 1 + k s^2, E|x|^2 = 1 + k d s^2, noise orthogonal to w* isotropic with variance s^2;
    and with tiny noise the signal patch is y w* at a uniform position."""
    k, d, n = 4, 8, 40000
    sigma = noise_scale / np.sqrt(k)
    w = _w(d)
    x, y = dsd.dsd_sample(jax.random.PRNGKey(0), n, k, d, w, sigma)
    x, y = np.asarray(x, np.float64), np.asarray(y)
    assert x.shape == (n, k, d) and set(np.unique(y)) == {-1.0, 1.0} and abs(y.mean()) < 0.02
    proj = x @ np.asarray(w, np.float64)  # (n, k)
    assert abs((y * proj.sum(1)).mean() - 1.0) < 0.01
    assert abs((proj**2).sum(1).mean() - (1 + k * sigma**2)) < 0.02
    assert abs((x**2).sum((1, 2)).mean() - (1 + k * d * sigma**2)) < 0.03
    orth = x - proj[..., None] * np.asarray(w, np.float64)
    assert abs(orth.var() * d / (d - 1) - sigma**2) < 0.01 * sigma**2 + 1e-4
    assert abs(x.mean()) < 0.003
    x0, y0 = dsd.dsd_sample(jax.random.PRNGKey(1), n, k, d, w, 1e-4)
    p0 = np.asarray(x0) @ np.asarray(w)
    pos = np.argmax(np.abs(p0), axis=1)
    np.testing.assert_allclose(p0[np.arange(n), pos], np.asarray(y0), atol=1e-3)
    assert np.all(np.abs(np.bincount(pos, minlength=k) / n - 1 / k) < 0.01)


def test_padded_sample_is_zero_outside_the_active_block():
    x, _ = dsd.dsd_sample(jax.random.PRNGKey(1), 100, 3, 5, _w(5, 8), 0.3, shape=(6, 8))
    x = np.asarray(x)
    assert x.shape == (100, 6, 8)
    assert np.all(x[:, 3:] == 0) and np.all(x[:, :, 5:] == 0) and np.any(x[:, :3, :5] != 0)


@pytest.mark.parametrize("kind", dsd.MODELS)
def test_masked_padded_model_equals_the_unpadded_one(kind):
    k, d, K, D, width = 3, 5, 6, 8, 4
    x, _ = dsd.dsd_sample(jax.random.PRNGKey(2), 50, k, d, _w(d, D), 0.3, shape=(K, D))
    p = dsd.init_model(kind, jax.random.PRNGKey(3), K, D, width, k=k, d=d)
    if kind == "cnn":
        small = {"w": p["w"][:, :d], "b": p["b"], "a": p["a"]}
    elif kind == "lcn":
        small = {"w": p["w"][:k, :, :d], "b": p["b"][:k], "a": p["a"][:k]}
    else:
        cols = (np.arange(k)[:, None] * D + np.arange(d)[None]).reshape(-1)
        small = {"w": p["w"][: width * k][:, cols], "b": p["b"][: width * k], "a": p["a"][: width * k]}
    got = dsd.apply_model(kind, p, x, k)
    want = dsd.apply_model(kind, small, x[:, :k, :d])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_bounds_and_config_checks():
    assert dsd.bound("lcn", 8, 16, 1 / 8) / dsd.bound("cnn", 8, 16, 1 / 8) == 8
    cfg = dict(dsd.CONFIGS["quick"])
    dsd.check_config(cfg)
    for bad in (dict(ks="4,x"), dict(ds=""), dict(n_min=10, n_max=10)):
        with pytest.raises(ValueError) as err:
            dsd.check_config({**cfg, **bad})
        assert "\n" not in str(err.value)
    assert set(dsd.CONFIGS["quick"]) == set(dsd.CONFIGS["full"])


def _claims(n_star_of):
    """The claims of a synthetic run where every tried n at or above ``n_star_of(model, k, d)`` reaches 95%."""
    cfg = {**dsd.CONFIGS["quick"], "ks": "4,8", "ds": "8"}
    grid = [4, 8, 16, 32, 64, 128, 256]
    tried = {m: {f"k={k},d=8": {str(n): [0.95 if n >= n_star_of(m, k) else 0.6] * 3 for n in grid}
                 for k in (4, 8) if m != "fcn" or k == 4} for m in dsd.MODELS}
    return {c.id: c for c in dsd.claims({"tried": tried}, cfg)}


def test_claims_from_measurements():
    """claims() recomputes n* from the tried accuracies (JSON-shaped) and CRITERIA only."""
    good = _claims(lambda m, k: {"cnn": 8, "lcn": 4 * k, "fcn": 128}[m])
    assert good["order-cnn-lcn-fcn"].passed and good["lcn-cnn-ratio-grows-with-k"].passed
    assert good["order-cnn-lcn-fcn"].measured["lcn"] == {"k=4,d=8": 16, "k=8,d=8": 32}
    assert good["lcn-cnn-ratio-grows-with-k"].measured["ratios"]["d=8"] == {"k=4": 2.0, "k=8": 4.0}
    bad = _claims(lambda m, k: {"cnn": 8, "lcn": 128 // k, "fcn": 8}[m])  # FCN as cheap as the CNN; ratio falls with k
    assert bad["order-cnn-lcn-fcn"].passed is False and bad["lcn-cnn-ratio-grows-with-k"].passed is False
    never = _claims(lambda m, k: 10**6 if m == "fcn" else {"cnn": 8, "lcn": 4 * k}[m])  # FCN never reaches: beyond n_max
    assert never["order-cnn-lcn-fcn"].passed and never["order-cnn-lcn-fcn"].measured["fcn"] == {"k=4,d=8": None}
