"""The GIFD stand-in generator: a small VAE decoder for 8x8 digits, split into stages.

GIFD (Fang et al. 2023) searches the latent and the intermediate features of a
pretrained BigGAN/StyleGAN2. Our 8x8 digits have no such model, so the experiment
trains a small variational autoencoder (Kingma & Welling 2014) with ``lgrad.train.fit``
on digits disjoint from the attacked client's rows and uses its decoder

.. math::

    z \\in \\mathbb R^{8} \\xrightarrow{g_1} h_1 \\in \\mathbb R^{32}
      \\xrightarrow{g_2} h_2 \\in \\mathbb R^{64}
      \\xrightarrow{g_3} h_3 \\in \\mathbb R^{128}
      \\xrightarrow{g_4} x \\in [0, 1]^{64}

(dense layers; ReLU after :math:`g_1..g_3`, a sigmoid after :math:`g_4`) as the
generator: latent :math:`z \\sim N(0, I)` as in GIFD's random start, and three
intermediate features to search. Loss: Bernoulli reconstruction (binary
cross-entropy, summed over pixels) + KL(q(z|x) || N(0, I)), batch mean.
See ``docs/papers/hyperfl-inversion.md``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.train import fit

LATENT, FEATURES, D_IMG = 8, (32, 64, 128), 64


def _dense(key, d_in, d_out):
    return {"w": jax.random.normal(key, (d_in, d_out)) * np.sqrt(2.0 / d_in), "b": jnp.zeros(d_out)}


def _relu_stage(p, h):
    return jax.nn.relu(h @ p["w"] + p["b"])


def _image_stage(p, h):
    return jax.nn.sigmoid(h @ p["w"] + p["b"])


STAGES = (_relu_stage, _relu_stage, _relu_stage, _image_stage)


def decode(stage_params, z):
    """:math:`G(z) = g_4 \\circ g_3 \\circ g_2 \\circ g_1 (z)`, pixels in [0, 1]."""
    h = z
    for stage, p in zip(STAGES, stage_params):
        h = stage(p, h)
    return h


def init(key) -> dict[str, Any]:
    ks = jax.random.split(key, 6)
    dims = (LATENT, *FEATURES, D_IMG)
    dec = [_dense(ks[i], dims[i], dims[i + 1]) for i in range(4)]
    return {"enc": _dense(ks[4], D_IMG, 128), "enc_out": _dense(ks[5], 128, 2 * LATENT), "dec": dec}


def _loss(params, batch):
    x, eps = batch
    h = jax.nn.relu(x @ params["enc"]["w"] + params["enc"]["b"])
    stats = h @ params["enc_out"]["w"] + params["enc_out"]["b"]
    mu, logvar = stats[:, :LATENT], jnp.clip(stats[:, LATENT:], -8.0, 8.0)
    z = mu + jnp.exp(0.5 * logvar) * eps
    h = z
    for stage, p in zip(STAGES[:-1], params["dec"][:-1]):
        h = stage(p, h)
    logits = h @ params["dec"][-1]["w"] + params["dec"][-1]["b"]
    rec = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=-1)
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)
    return jnp.mean(rec + kl), {"reconstruction": jnp.mean(rec), "kl": jnp.mean(kl)}


def train(x: np.ndarray, *, steps: int, batch_size: int, learning_rate: float, key, progress=None):
    """Fit the VAE on rows ``x`` (n, 64) in [0, 1]; returns ``(decoder stage params, history)``."""
    data = jnp.asarray(x, jnp.float32)
    n = data.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in [1, {n}], got {batch_size}")

    def batch_fn(step, k):
        del step
        k1, k2 = jax.random.split(k)
        return data[jax.random.randint(k1, (batch_size,), 0, n)], jax.random.normal(k2, (batch_size, LATENT))

    k_init, k_fit = jax.random.split(key)
    res = fit(_loss, init(k_init), optax.adam(learning_rate), steps=steps, batch_fn=batch_fn, key=k_fit,
              has_aux=True, progress=progress)
    return res.params["dec"], res.history
