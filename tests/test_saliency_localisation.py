"""saliency-localisation: data generator, im2col conv and the SMOKE run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import saliency_localisation as exp
from lgrad.engine import run_experiment


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


def test_smoke(tmp_path):
    result = run_experiment(exp.NAME, "quick", exp.SMOKE, tmp_path, show_progress=False)
    ids = {c.id: c for c in result.claims}
    assert ids["normgrad-virtual-conv"].passed
    assert {"normgrad-localises", "ig-completeness", "hit-rates"} <= set(ids)
    assert jnp.isfinite(ids["ig-completeness"].measured)
