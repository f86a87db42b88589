"""Exact flows on an explicit small DAG: the reference every objective must give zero loss on.

States ``0..n-1`` with ``0`` the root; ``children[s]`` lists the children of ``s``;
the leaves are the terminal objects, :math:`R(x) = e^{-E(x)}`. With a uniform
backward policy, the exact flow is :math:`F(x) = R(x)` on leaves and
:math:`F(s) = \\sum_{s'} F(s') P_B(s|s')` elsewhere; :math:`P_F(s'|s) =
F(s')P_B(s|s')/F(s)` and :math:`Z = F(s_0)` (docs/papers/flgfn-credit.md).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def tiny_dag(seed: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """An 8-state DAG with leaves at depths 2 and 3 (so trajectories need padding) and
    energies drawn uniformly in ``[-1, 1]`` on every state: ``(children, energy)``."""
    children = [[1, 2], [3, 4], [4, 5], [], [6, 7], [7], [], []]
    return children, np.random.default_rng(seed).uniform(-1.0, 1.0, len(children))


def _paths(children, s=0):
    if not children[s]:
        return [[s]]
    return [[s] + p for c in children[s] for p in _paths(children, c)]


def exact_flow_batch(children: Sequence[Sequence[int]], energy) -> dict[str, np.ndarray]:
    """Every root-to-leaf trajectory with the exact flows, as loss inputs (float64).

    Returns ``log_pf``, ``log_pb``, ``log_r``, ``mask``, ``done`` (B, T); ``log_flow``
    and ``log_flow_tilde`` = :math:`\\log F + E` (B, T + 1; padded with the last state);
    ``log_reward`` (B,); ``log_z``; ``path_prob`` (B,) :math:`\\prod_t P_F`; ``leaf`` (B,).
    """
    n = len(children)
    energy = np.asarray(energy, np.float64)
    parents = [[p for p in range(n) if s in children[p]] for s in range(n)]
    if any(c <= s for s in range(n) for c in children[s]):
        raise ValueError("children: states must be numbered in topological order (every child > its parent)")
    log_f = np.zeros(n)
    for s in reversed(range(n)):
        if children[s]:
            log_f[s] = np.logaddexp.reduce([log_f[c] - np.log(len(parents[c])) for c in children[s]])
        else:
            log_f[s] = -energy[s]
    paths = _paths(children)
    T = max(len(p) for p in paths) - 1
    B = len(paths)
    out = {k: np.zeros((B, T)) for k in ("log_pf", "log_pb", "log_r")}
    out["mask"], out["done"] = np.zeros((B, T), bool), np.zeros((B, T), bool)
    out["log_flow"], out["log_flow_tilde"] = np.zeros((B, T + 1)), np.zeros((B, T + 1))
    for b, p in enumerate(paths):
        padded = p + [p[-1]] * (T + 1 - len(p))
        out["log_flow"][b] = log_f[padded]
        out["log_flow_tilde"][b] = log_f[padded] + energy[padded]
        for t, (s, c) in enumerate(zip(p[:-1], p[1:])):
            lpb = -np.log(len(parents[c]))
            out["log_pb"][b, t] = lpb
            out["log_pf"][b, t] = log_f[c] + lpb - log_f[s]
            out["log_r"][b, t] = -(energy[c] - energy[s])
            out["mask"][b, t] = True
            out["done"][b, t] = t == len(p) - 2
    out["log_reward"] = -energy[[p[-1] for p in paths]]
    out["log_z"] = np.float64(log_f[0])
    out["path_prob"] = np.exp(out["log_pf"].sum(1))
    out["leaf"] = np.array([p[-1] for p in paths])
    return out
