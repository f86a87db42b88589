"""lgrad.data._distill: CDA's crop-scale schedule values, the random resized crop
(identity at scale 1, bilinear = numpy reference), jitter, BN matching."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgrad.data._distill import bn_matching_loss, crop_scale_schedule, jitter, random_resized_crop


def test_crop_scale_schedule_values():
    T, m = 1000, 0.5
    vals = [float(crop_scale_schedule(t, T, milestone=m)) for t in (0, 125, 250, 375, 500, 750, 1000)]
    want = [0.08 + 0.46 * (1 + math.cos(math.pi * t / 500)) for t in (0, 125, 250, 375)] + [0.08] * 3
    np.testing.assert_allclose(vals, want, atol=1e-6)
    assert vals[0] == pytest.approx(1.0) and vals[2] == pytest.approx(0.54)
    assert np.all(np.diff(vals) <= 1e-7)  # non-increasing: global -> local
    np.testing.assert_allclose(float(crop_scale_schedule(10, 10, milestone=1.0, start=0.9, end=0.2)), 0.2, atol=1e-6)


def test_full_scale_square_crop_is_the_identity():
    img = jnp.asarray(np.random.default_rng(0).random((14, 14, 2)), jnp.float32)
    out = random_resized_crop(jax.random.PRNGKey(0), img, min_scale=1.0, max_scale=1.0, ratio=(1.0, 1.0))
    np.testing.assert_allclose(np.asarray(out), np.asarray(img), atol=1e-5)


def test_crop_matches_a_numpy_bilinear_reference():
    rng = np.random.default_rng(1)
    img = rng.random((12, 10, 1)).astype(np.float32)
    key = jax.random.PRNGKey(3)
    out = np.asarray(random_resized_crop(key, jnp.asarray(img), min_scale=0.3, max_scale=0.3))
    # recover the crop box from the same draws
    ks, kr, ky, kx = jax.random.split(key, 4)
    area = float(jax.random.uniform(ks, minval=0.3, maxval=0.3))
    r = math.exp(float(jax.random.uniform(kr, minval=math.log(3 / 4), maxval=math.log(4 / 3))))
    h, w = min(max(math.sqrt(area / r) * 12, 1), 12), min(max(math.sqrt(area * r) * 10, 1), 10)
    y0, x0 = float(jax.random.uniform(ky)) * (12 - h), float(jax.random.uniform(kx)) * (10 - w)
    ref = np.zeros_like(img)
    for i in range(12):
        for j in range(10):
            y = min(max(y0 + (i + 0.5) * h / 12 - 0.5, 0), 11)
            x = min(max(x0 + (j + 0.5) * w / 10 - 0.5, 0), 9)
            ya, xa = int(math.floor(y)), int(math.floor(x))
            yb, xb = min(ya + 1, 11), min(xa + 1, 9)
            fy, fx = y - ya, x - xa
            ref[i, j] = ((1 - fy) * (1 - fx) * img[ya, xa] + (1 - fy) * fx * img[ya, xb]
                         + fy * (1 - fx) * img[yb, xa] + fy * fx * img[yb, xb])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_jitter_rolls_and_bn_loss():
    img = jnp.arange(25.0).reshape(5, 5, 1)
    out = np.asarray(jitter(jax.random.PRNGKey(0), img, 2))
    assert sorted(out.ravel()) == list(range(25))
    assert np.array_equal(np.asarray(jitter(jax.random.PRNGKey(0), img, 0)), np.asarray(img))
    stats = [(jnp.ones(3), jnp.ones(3)), (jnp.zeros(4), jnp.ones(4))]
    assert float(bn_matching_loss(stats, stats)) == 0.0
    moved = [(jnp.ones(3) + jnp.array([3.0, 4.0, 0.0]), jnp.ones(3)), stats[1]]
    assert float(bn_matching_loss(moved, stats, first_multiplier=10.0)) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        bn_matching_loss(stats, stats[:1])
    with pytest.raises(ValueError):
        crop_scale_schedule(0, 0)
    with pytest.raises(ValueError):
        crop_scale_schedule(0, 10, milestone=0.0)


def test_cda_claims_from_measurements():
    """cda-distill's claims follow from the stored accuracies and CRITERIA only."""
    from experiments import cda_distill as cda

    cfg = {**cda.CONFIGS["quick"], "n_seeds": 2}
    m = {"teacher_test_acc": 0.9, "real_subset_student_acc": [0.8, 0.9],
         "sre2l": {"student_acc": [0.5, 0.6], "teacher_acc_on_synthetic": [1.0, 1.0]},
         "cda": {"student_acc": [0.6, 0.5], "teacher_acc_on_synthetic": [1.0, 1.0]}}
    c = {x.id: x for x in cda.claims(m, cfg)}
    assert c["cda-ge-sre2l"].passed and c["cda-ge-sre2l"].measured["cda"]["mean"] == pytest.approx(0.55)
    assert c["teacher-accuracy"].measured == 0.9 and c["real-subset-reference"].measured["mean"] == pytest.approx(0.85)
    m["cda"]["student_acc"] = [0.5, 0.59]
    assert cda.claims(m, cfg)[0].passed is False
