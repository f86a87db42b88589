"""Batched trajectories of an :class:`~lgrad.gflownet.Environment` and the terms the losses need.

:func:`sample_trajectories` rolls ``B`` trajectories forward in one ``lax.scan`` of
``env.max_len`` steps (finished trajectories are padded: ``mask`` false, state kept).
:func:`trajectory_terms` evaluates a model ``apply(features) -> (forward logits,
backward logits, log flow)`` on every state and returns the arrays of
:mod:`lgrad.gflownet._losses` (docs/papers/flgfn-credit.md).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lgrad.gflownet._envs import Environment

_NEG = -1e9


class Trajectories(NamedTuple):
    states: jax.Array  # (B, T + 1, state_dim) int32
    actions: jax.Array  # (B, T) forward actions
    back_actions: jax.Array  # (B, T) backward actions (-1: stop transition)
    mask: jax.Array  # (B, T) the transition exists
    done: jax.Array  # (B, T) it ends in a terminal state


def masked_log_softmax(logits, mask):
    """``log_softmax`` over the allowed entries (``mask`` true); forbidden ones get about -1e9."""
    return jax.nn.log_softmax(jnp.where(mask, logits, _NEG), axis=-1)


def sample_trajectories(key, env: Environment, policy: Callable, batch_size: int, *, explore: float = 0.0) -> Trajectories:
    """``batch_size`` trajectories from ``env.init()``; the action at ``s`` is drawn from
    :math:`(1-\\epsilon)\\,P_F(\\cdot|s) + \\epsilon\\,\\mathrm{Uniform}(\\text{allowed})`
    with :math:`\\epsilon` = ``explore`` and ``P_F = softmax(policy(features(s)))`` over
    the allowed actions (the authors' ``exp_weight``)."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"explore: must lie in [0, 1], got {explore!r}")
    s0 = jnp.broadcast_to(env.init(), (batch_size,) + env.init().shape)

    def one(s, alive, k):
        allowed = env.forward_mask(s)
        probs = jnp.exp(masked_log_softmax(policy(env.features(s)), allowed))
        probs = (1.0 - explore) * probs + explore * allowed / jnp.maximum(jnp.sum(allowed), 1)
        a = jax.random.choice(k, env.n_actions, p=probs / jnp.sum(probs))
        nxt, b = env.step(s, a)
        nxt = jnp.where(alive, nxt, s)
        return nxt, a, b, alive & env.is_terminal(nxt)

    def body(carry, k):
        s, alive = carry
        nxt, a, b, done = jax.vmap(one)(s, alive, jax.random.split(k, batch_size))
        return (nxt, alive & ~done), (nxt, a, b, alive, done)

    _, (states, a, b, mask, done) = jax.lax.scan(body, (s0, jnp.ones(batch_size, bool)), jax.random.split(key, env.max_len))
    states = jnp.concatenate([s0[None], states], axis=0)
    return Trajectories(*(jnp.swapaxes(x, 0, 1) for x in (states, a, b, mask, done)))


def trajectory_terms(env: Environment, apply: Callable, traj: Trajectories) -> dict[str, jax.Array]:
    """Evaluate ``apply(features) -> (fwd_logits, back_logits, log_flow)`` along ``traj``.

    Returns ``log_pf``, ``log_pb`` (0 on stop transitions), ``mask``, ``done`` (B, T),
    ``log_flow`` (B, T + 1), ``log_r`` = :math:`-(E(s_{t+1}) - E(s_t))` (B, T) and
    ``log_reward`` = :math:`-E(x)` of the final state (B,).
    """
    feats = jax.vmap(jax.vmap(env.features))(traj.states)
    fwd, back, log_flow = apply(feats)
    fmask = jax.vmap(jax.vmap(env.forward_mask))(traj.states[:, :-1])
    bmask = jax.vmap(jax.vmap(env.backward_mask))(traj.states[:, 1:])
    lpf = jnp.take_along_axis(masked_log_softmax(fwd[:, :-1], fmask), traj.actions[..., None], -1)[..., 0]
    lpb_all = masked_log_softmax(back[:, 1:], bmask)
    lpb = jnp.take_along_axis(lpb_all, jnp.maximum(traj.back_actions, 0)[..., None], -1)[..., 0]
    lpb = jnp.where(traj.back_actions < 0, 0.0, lpb)
    energy = jax.vmap(jax.vmap(env.energy))(traj.states)
    return dict(
        log_pf=jnp.where(traj.mask, lpf, 0.0),
        log_pb=jnp.where(traj.mask, lpb, 0.0),
        mask=traj.mask,
        done=traj.done,
        log_flow=log_flow,
        log_r=jnp.where(traj.mask, -(energy[:, 1:] - energy[:, :-1]), 0.0),
        log_reward=-energy[:, -1],
    )
