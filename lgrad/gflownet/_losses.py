"""GFlowNet training objectives as pure losses over batched trajectories.

A batch of ``B`` trajectories padded to ``T`` transitions ``s_0 -> s_1 -> ... -> s_T``:

- ``log_pf[b, t]`` = :math:`\\log P_F(s_{t+1} | s_t)`, ``log_pb[b, t]`` = :math:`\\log P_B(s_t | s_{t+1})`
  (0 for a "stop" transition into the sink, whose only parent is ``s_t``);
- ``mask[b, t]``: the transition exists (trajectories shorter than ``T`` are padded);
- ``done[b, t]``: ``s_{t+1}`` is the terminal object ``x`` (its flow is the reward);
- ``log_flow[b, t]`` (``t = 0..T``): the learned state flow of ``s_t``.

References: trajectory balance (Malkin et al. 2022), detailed balance (Bengio et al.
2023, GFlowNet Foundations), forward-looking detailed balance (Pan, Malkin, Zhang &
Bengio 2023, Better Training of GFlowNets with Local Credit and Incomplete
Trajectories, ICML); our account: docs/papers/flgfn-credit.md.
"""
from __future__ import annotations

import jax.numpy as jnp


def _check_shapes(log_pf, log_pb, mask, done=None, log_flow=None) -> None:
    if log_pf.ndim != 2:
        raise ValueError(f"log_pf: must have shape (B, T), got {log_pf.shape}")
    for name, a in (("log_pb", log_pb), ("mask", mask), ("done", done)):
        if a is not None and a.shape != log_pf.shape:
            raise ValueError(f"{name}: must have the shape of log_pf {log_pf.shape}, got {a.shape}")
    if log_flow is not None and log_flow.shape != (log_pf.shape[0], log_pf.shape[1] + 1):
        raise ValueError(f"log_flow: must have shape (B, T + 1) = {(log_pf.shape[0], log_pf.shape[1] + 1)}, got {log_flow.shape}")


def _masked_mean(sq, mask):
    m = mask.astype(sq.dtype)
    return jnp.sum(sq * m) / jnp.maximum(jnp.sum(m), 1.0)


def trajectory_balance_residuals(log_z, log_pf, log_pb, log_reward, mask):
    """Per-trajectory TB residual (shape ``(B,)``):

    .. math:: \\delta = \\log Z + \\sum_t \\log P_F(s_{t+1}|s_t) - \\log R(x) - \\sum_t \\log P_B(s_t|s_{t+1}).
    """
    _check_shapes(log_pf, log_pb, mask)
    m = mask.astype(log_pf.dtype)
    return log_z + jnp.sum(log_pf * m, -1) - log_reward - jnp.sum(log_pb * m, -1)


def trajectory_balance(log_z, log_pf, log_pb, log_reward, mask):
    """Trajectory balance loss (Malkin et al. 2022): the mean over trajectories of the
    squared :func:`trajectory_balance_residuals`."""
    return jnp.mean(trajectory_balance_residuals(log_z, log_pf, log_pb, log_reward, mask) ** 2)


def detailed_balance_residuals(log_flow, log_pf, log_pb, log_reward, mask, done):
    """Per-transition DB residual (shape ``(B, T)``; padded transitions give 0):

    .. math:: \\delta_t = \\log F(s_t) + \\log P_F(s_{t+1}|s_t) - \\log F(s_{t+1}) - \\log P_B(s_t|s_{t+1}),

    with :math:`\\log F(s_{t+1}) = \\log R(x)` where ``done[b, t]`` (``log_reward`` has shape ``(B,)``).
    """
    _check_shapes(log_pf, log_pb, mask, done, log_flow)
    nxt = jnp.where(done, log_reward[:, None], log_flow[:, 1:])
    return jnp.where(mask, log_flow[:, :-1] + log_pf - nxt - log_pb, 0.0)


def detailed_balance(log_flow, log_pf, log_pb, log_reward, mask, done):
    """Detailed balance loss: the mean over valid transitions of the squared
    :func:`detailed_balance_residuals` (the authors' reduction)."""
    return _masked_mean(detailed_balance_residuals(log_flow, log_pf, log_pb, log_reward, mask, done) ** 2, mask)


def forward_looking_residuals(log_flow_tilde, log_pf, log_pb, log_r, mask, done, *, fix_terminal=True):
    """Per-transition FL-DB residual (Pan et al. 2023, Eq. 8), shape ``(B, T)``:

    .. math::
        \\delta_t = \\log\\tilde F(s_t) + \\log P_F(s_{t+1}|s_t) - \\log P_B(s_t|s_{t+1})
        - \\log\\tilde F(s_{t+1}) - \\log r(s_t \\to s_{t+1}),

    where :math:`F(s) = \\tilde F(s)\\,e^{-E(s)}` and
    :math:`\\log r(s \\to s') = -(E(s') - E(s))` (``log_r``, shape ``(B, T)``). With
    ``fix_terminal=True`` (the paper) :math:`\\log\\tilde F(x) = 0` at terminal states
    (``done``); with ``False`` (the authors' released code) the learned
    ``log_flow_tilde`` of the terminal state is used. Needs no terminal reward: it
    applies to incomplete trajectories.
    """
    if not isinstance(fix_terminal, bool):
        raise ValueError(f"fix_terminal: must be True or False, got {fix_terminal!r}")
    _check_shapes(log_pf, log_pb, mask, done, log_flow_tilde)
    if log_r.shape != log_pf.shape:
        raise ValueError(f"log_r: must have the shape of log_pf {log_pf.shape}, got {log_r.shape}")
    nxt = log_flow_tilde[:, 1:]
    if fix_terminal:
        nxt = jnp.where(done, 0.0, nxt)
    return jnp.where(mask, log_flow_tilde[:, :-1] + log_pf - log_pb - nxt - log_r, 0.0)


def forward_looking_db(log_flow_tilde, log_pf, log_pb, log_r, mask, done, *, fix_terminal=True):
    """Forward-looking detailed balance loss (FL-DB): the mean over valid transitions
    of the squared :func:`forward_looking_residuals`."""
    res = forward_looking_residuals(log_flow_tilde, log_pf, log_pb, log_r, mask, done, fix_terminal=fix_terminal)
    return _masked_mean(res**2, mask)
