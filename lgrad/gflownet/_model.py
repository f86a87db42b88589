"""A plain MLP for GFlowNet policies: one network outputs forward logits, backward
logits and the log state flow (the authors' layout; docs/papers/flgfn-credit.md)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lgrad.gflownet._envs import Environment


def mlp_init(key, sizes) -> list[dict[str, jax.Array]]:
    """Layers ``sizes[0] -> ... -> sizes[-1]``, weights :math:`N(0, 1/\\text{fan-in})`, zero biases."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes: must list >= 2 positive widths, got {sizes!r}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (i, o)) / jnp.sqrt(i), "b": jnp.zeros(o)}
        for k, i, o in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_apply(params, x):
    """Leaky-ReLU MLP (no activation after the last layer)."""
    for layer in params[:-1]:
        x = jax.nn.leaky_relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def policy_model(env: Environment, key, *, hidden: int = 256, layers: int = 2) -> tuple[Any, Callable]:
    """``(params, apply)`` with ``apply(params, feats) -> (fwd_logits, back_logits, log_flow)``;
    ``params = {"net": MLP, "log_z": scalar}`` (``log_z`` is used by trajectory balance only)."""
    net = mlp_init(key, [env.feature_dim] + [hidden] * layers + [env.n_actions + env.n_back + 1])

    def apply(params, feats):
        out = mlp_apply(params["net"], feats)
        return out[..., : env.n_actions], out[..., env.n_actions : env.n_actions + env.n_back], out[..., -1]

    return {"net": net, "log_z": jnp.zeros(())}, apply
