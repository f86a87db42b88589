"""Small NNX models as block lists (the experiment's MLP, CNN and RNN).

Each factory returns a list of ``nnx.Module`` blocks; wrap them in ``nnx.Sequential``
or pass the list straight to :class:`lgrad.local.LocalLearner`.

Example::

    from flax import nnx
    blocks = mlp(64, (128, 128), 10, rngs=nnx.Rngs(0))
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["ACTIVATIONS", "DenseBlock", "ConvBlock", "Readout", "RNNLayer", "mlp", "cnn", "rnn"]


class DenseBlock(nnx.Module):
    """``act(W h + b)`` on flat features."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, act=jax.nn.relu):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.act = act

    def __call__(self, h):
        return self.act(self.linear(h))


class ConvBlock(nnx.Module):
    """3x3 conv, ``act`` (default ReLU), optional 2x2 max-pool (NHWC)."""

    def __init__(self, cin: int, cout: int, *, pool: bool, rngs: nnx.Rngs, act=jax.nn.relu):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
        self.pool = pool
        self.act = act

    def __call__(self, h):
        h = self.act(self.conv(h))
        if self.pool:
            h = nnx.max_pool(h, (2, 2), strides=(2, 2))
        return h


class Readout(nnx.Module):
    """Classifier: optional 2x2 max-pool, flatten (or the last time step), linear."""

    def __init__(self, din: int, num_classes: int, *, rngs: nnx.Rngs, pool: bool = False, last_step: bool = False):
        self.linear = nnx.Linear(din, num_classes, rngs=rngs)
        self.pool, self.last_step = pool, last_step

    def __call__(self, h):
        if self.last_step:
            h = h[:, -1]
        if self.pool:
            h = nnx.max_pool(h, (2, 2), strides=(2, 2))
        return self.linear(h.reshape(h.shape[0], -1))


class RNNLayer(nnx.Module):
    r"""Elman layer over a sequence ``(B, T, F) -> (B, T, H)``:
    :math:`h_t = \tanh(W x_t + U h_{t-1} + b)`. With ``truncate`` the recurrence is
    ``stop_gradient``-ed (:math:`U\,\mathrm{sg}(h_{t-1})`): every time step's update is
    local in time, as tpSGD's forward-only RNN training needs."""

    def __init__(self, din: int, dh: int, *, rngs: nnx.Rngs, truncate: bool = False):
        self.inp = nnx.Linear(din, dh, rngs=rngs)
        self.rec = nnx.Linear(dh, dh, use_bias=False, rngs=rngs,
                              kernel_init=nnx.initializers.orthogonal())
        self.truncate = truncate
        self.dh = dh

    def __call__(self, x):
        u = self.inp(x)  # (B, T, H)
        w = self.rec.kernel[...]
        trunc = self.truncate

        def step(h, ut):
            hp = jax.lax.stop_gradient(h) if trunc else h
            h = jnp.tanh(ut + hp @ w)
            return h, h

        h0 = jnp.zeros((x.shape[0], self.dh), u.dtype)
        _, hs = jax.lax.scan(step, h0, jnp.swapaxes(u, 0, 1))
        return jnp.swapaxes(hs, 0, 1)


ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


def _activation(act: str):
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    return ACTIVATIONS[act]


def mlp(din: int, widths: Sequence[int], num_classes: int, *, rngs: nnx.Rngs, act: str = "relu") -> list[nnx.Module]:
    """Dense blocks of ``widths`` with activation ``act`` (``"relu"`` or ``"tanh"``: DRTP's
    paper uses tanh hidden units), then a linear readout."""
    f = _activation(act)
    dims = [din, *widths]
    return [DenseBlock(a, b, rngs=rngs, act=f) for a, b in zip(dims[:-1], dims[1:])] + [Readout(dims[-1], num_classes, rngs=rngs)]


def cnn(
    image_hw: tuple[int, int], channels: int, num_classes: int, *, n_conv: int = 2, cin: int = 1, rngs: nnx.Rngs,
    act: str = "relu",
) -> list[nnx.Module]:
    """``n_conv`` conv blocks of ``channels`` with activation ``act`` (the first one pools
    2x2), then a readout that pools 2x2 again. All hidden blocks after the first keep
    their shape, so any subset of them chains (what AugLocal's copies need)."""
    f = _activation(act)
    blocks: list[nnx.Module] = [ConvBlock(cin, channels, pool=True, rngs=rngs, act=f)]
    blocks += [ConvBlock(channels, channels, pool=False, rngs=rngs, act=f) for _ in range(n_conv - 1)]
    h, w = image_hw[0] // 4, image_hw[1] // 4
    return blocks + [Readout(h * w * channels, num_classes, pool=True, rngs=rngs)]


def rnn(din: int, hidden: int, num_classes: int, *, n_layers: int = 1, truncate: bool = False, rngs: nnx.Rngs) -> list[nnx.Module]:
    dims = [din] + [hidden] * n_layers
    layers: list[nnx.Module] = [RNNLayer(a, b, truncate=truncate, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
    return layers + [Readout(hidden, num_classes, last_step=True, rngs=rngs)]
