"""saliency-localisation: data generator, im2col conv and the claims."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from experiments import saliency_localisation as exp


def test_one_patch_decides_the_class():
    x, y, where = exp.make_images(np.random.default_rng(0), 50, 3, 0.1)
    classes, _ = exp._patterns()
    for i in range(50):
        r, c = divmod(int(where[i]), exp.GRID)
        patch = x[i, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4, 0]
        assert np.all(patch[classes[y[i]] == 1] == 1)


def test_conv3x3_equals_lax_conv():
    conv = exp.Conv3x3(3, 5, nnx.Rngs(0), stride=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    w = conv.w[...].reshape(3, 3, 3, 5)
    ref = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.b[...]
    np.testing.assert_allclose(conv(x), ref, atol=1e-5)


def test_claims_from_hand_made_measurements():
    """``claims`` alone, on measurements as read back from JSON (2 seeds)."""
    seed = lambda ng, acc: {"hits": {"normgrad": ng, "grad_cam": 0.5}, "accuracy": acc, "virtual_conv": 2e-7}  # noqa: E731
    m = {"per_seed": [seed(0.875, 0.96), seed(1.0, 0.9949)], "ig_rel_error": {"mean": 0.002, "median": 0.001, "max": float("inf")}}
    config = dict(exp.CONFIGS["quick"], n_seeds=2)
    out = {c.id: c for c in exp.claims(m, config)}
    assert out["normgrad-virtual-conv"].passed and out["normgrad-virtual-conv"].measured == 2e-7
    assert out["normgrad-localises"].passed and out["normgrad-localises"].measured == 0.9375
    assert "per seed [0.875, 1.0]; test accuracy per seed [0.96, 0.995]" in out["normgrad-localises"].note
    assert out["ig-completeness"].passed and out["ig-completeness"].note.endswith("median 1.00e-03, max inf")
    assert out["hit-rates"].measured == {"normgrad": [0.938, 0.875, 1.0], "grad_cam": [0.5, 0.5, 0.5]}
    m["per_seed"][1]["hits"]["normgrad"] = 0.75
    assert not {c.id: c for c in exp.claims(m, config)}["normgrad-localises"].passed
