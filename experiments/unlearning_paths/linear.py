"""Part 1: the linear theory of Yu et al. 2025 (Sec. 3), in float64.

Over-parametrised linear regression (d > n_A + n_B). Stage S minimises
``||X_S theta - y_S||^2 + mu ||theta - theta_prev||^2`` (from theta_0 = 0), so

    theta_A  = (X_A^T X_A + mu I)^{-1} X_A^T y_A
    theta_AB = (X_B^T X_B + mu I)^{-1} (X_B^T y_B + mu theta_A)      (theta_BA mirrored).

Gradient-ascent unlearning on the forget set U (k rows of A):
``theta_t = theta_{t-1} + eta grad (1/k)||X_U theta_{t-1} - y_U||^2``.

Lemma: Delta_t = (I + M_U)^t Delta_0, M_U = (2 eta / k) X_U^T X_U, Delta = theta_AB - theta_BA.

Theorem (bound): d(theta_AB^t, theta_BA^t) >= sigma_U^2 ||P_U Delta_0||^2 / (4m) (1 + rho*)^{2t}
for t >= t0, with P_U the projection onto span(rows of X_U), sigma_U = sigma_min(X_test P_U)
(the smallest singular value of X_test restricted to span(U), i.e. of X_test V_U with V_U an
orthonormal basis of that span), rho* = <P_U Delta_0, M_U P_U Delta_0> / ||P_U Delta_0||^2.

Why the bound holds and what t0 is (our derivation, docs/papers/unlearning-paths.md#the-bound-and-t0): write
X_test Delta_t = a_t + b with a_t = X_test P_U Delta_t and b = X_test (I - P_U) Delta_0 (the
part orthogonal to span(U) never moves, since M_U annihilates it). Then
||a_t + b||^2 >= ||a_t||^2 / 4 whenever ||a_t|| >= 2 ||b||, and ||a_t|| >= sigma_U ||P_U Delta_t||
>= sigma_U (1 + rho*)^t ||P_U Delta_0|| (Jensen over M_U's eigen-decomposition). We use
**t0 = the first t from which the bound's assumption ||a_s|| >= 2 ||b|| holds for every s >= t**
(measured on the run), and also report the closed-form sufficient t0_formula = the first t with
sigma_U (1 + rho*)^t ||P_U Delta_0|| >= 2 ||b|| (so t0 <= t0_formula).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.unlearn import Stage, re_distance, train_stages, unlearn


def make_problem(cfg: dict[str, Any], *, orthogonal: bool = False) -> dict[str, np.ndarray]:
    """Gaussian stages A and B; with ``orthogonal`` A uses the first d/2 coordinates and B the rest."""
    rng = np.random.default_rng(cfg["seed"])
    d, na, nb, m = cfg["lin_d"], cfg["lin_n_a"], cfg["lin_n_b"], cfg["lin_m"]
    xa = rng.standard_normal((na, d))
    xb = rng.standard_normal((nb, d))
    if orthogonal:
        xa[:, d // 2 :] = 0.0
        xb[:, : d // 2] = 0.0
    theta_star = rng.standard_normal(d) / np.sqrt(d)
    ya = xa @ theta_star + cfg["lin_noise"] * rng.standard_normal(na)
    yb = xb @ theta_star + cfg["lin_noise"] * rng.standard_normal(nb)
    xt = rng.standard_normal((m, d))
    return dict(xa=xa, ya=ya, xb=xb, yb=yb, xt=xt)


def closed_form(prob: dict[str, np.ndarray], mu: float) -> dict[str, np.ndarray]:
    d = prob["xa"].shape[1]
    eye = np.eye(d)

    def stage(x, y, prev):
        return np.linalg.solve(x.T @ x + mu * eye, x.T @ y + mu * prev)

    ta = stage(prob["xa"], prob["ya"], np.zeros(d))
    tb = stage(prob["xb"], prob["yb"], np.zeros(d))
    return dict(A=ta, B=tb, AB=stage(prob["xb"], prob["yb"], ta), BA=stage(prob["xa"], prob["ya"], tb))


def sq_loss(theta, batch):
    x, y = batch
    return jnp.sum(jnp.square(x @ theta - y))


def neg_sq_logprob(theta, batch):
    """Per-row 'log-likelihood' -(x_i^T theta - y_i)^2, so GA = ascent on (1/k)||X_U theta - y_U||^2."""
    x, y = batch
    return -jnp.square(x @ theta - y)


def stage_lr(prob: dict[str, np.ndarray], mu: float) -> float:
    """1 / L for the stage losses (L = 2 (lambda_max(X^T X) + mu)), the largest over A and B."""
    lmax = max(np.linalg.eigvalsh(prob[k].T @ prob[k]).max() for k in ("xa", "xb"))
    return 1.0 / (2.0 * (lmax + mu))


def train_paths(prob, cfg) -> dict[str, np.ndarray]:
    """theta_AB and theta_BA from the staged runner (plain GD on each stage, to convergence)."""
    mu = cfg["lin_mu"]
    lr = stage_lr(prob, mu)
    stages = [
        Stage((jnp.asarray(prob["xa"]), jnp.asarray(prob["ya"])), cfg["lin_stage_steps"], optax.sgd(lr), "A", proximal=mu),
        Stage((jnp.asarray(prob["xb"]), jnp.asarray(prob["yb"])), cfg["lin_stage_steps"], optax.sgd(lr), "B", proximal=mu),
    ]
    theta0 = jnp.zeros(prob["xa"].shape[1], jnp.float64)
    ab = train_stages(sq_loss, theta0, stages, order=(0, 1))
    ba = train_stages(sq_loss, theta0, stages, order=(1, 0))
    return dict(A=np.asarray(ab.stage_params[0]), AB=np.asarray(ab.params), B=np.asarray(ba.stage_params[0]), BA=np.asarray(ba.params))


def ga_trajectories(theta_ab: np.ndarray, theta_ba: np.ndarray, prob, cfg) -> tuple[np.ndarray, np.ndarray]:
    """theta_t, t = 0..T, of both paths under GA on the forget set (the first k rows of A).

    One batched ``unlearn`` call: the two models are stacked and the per-model losses
    summed, so with plain SGD each path gets exactly its own update.
    """
    k = cfg["lin_k"]
    forget = (jnp.asarray(prob["xa"][:k]), jnp.asarray(prob["ya"][:k]))
    start = jnp.stack([jnp.asarray(theta_ab), jnp.asarray(theta_ba)])
    res = unlearn("ga", neg_sq_logprob, start, forget, optax.sgd(cfg["lin_eta"]), steps=cfg["lin_T"], record_params=True, batched=True)
    traj = np.concatenate([np.asarray(start)[None], np.asarray(res.history["params"])], axis=0)
    return traj[:, 0], traj[:, 1]


def theory(prob, delta0: np.ndarray, cfg) -> dict[str, Any]:
    k, eta, T = cfg["lin_k"], cfg["lin_eta"], cfg["lin_T"]
    xu, xt = prob["xa"][:k], prob["xt"]
    m, d = xt.shape
    mu_mat = (2.0 * eta / k) * xu.T @ xu
    # Orthonormal basis of span(rows of X_U) and the projector P_U.
    u, s, vt = np.linalg.svd(xu, full_matrices=False)
    rank = int(np.sum(s > s.max() * max(xu.shape) * np.finfo(float).eps))
    vu = vt[:rank].T
    pu = vu @ vu.T
    sigma_u = float(np.linalg.svd(xt @ vu, compute_uv=False).min())
    pd0 = pu @ delta0
    npd0 = float(np.linalg.norm(pd0))
    rho = float(pd0 @ mu_mat @ pd0 / npd0**2) if npd0 > 0 else 0.0
    b_norm = float(np.linalg.norm(xt @ (delta0 - pd0)))
    ts = np.arange(T + 1)
    bound = sigma_u**2 * npd0**2 / (4 * m) * (1 + rho) ** (2 * ts)
    # Lemma prediction (I + M_U)^t Delta_0
    step = np.eye(d) + mu_mat
    pred = [delta0]
    for _ in range(T):
        pred.append(step @ pred[-1])
    if npd0 > 0 and rho > 0 and b_norm > 0:
        t0_formula = max(0, int(np.ceil(np.log(2 * b_norm / (sigma_u * npd0)) / np.log1p(rho))))
    else:
        t0_formula = 0
    return dict(M=mu_mat, P=pu, sigma_u=sigma_u, pd0_norm=npd0, rho=rho, b_norm=b_norm, bound=bound, lemma=np.stack(pred), t0_formula=t0_formula)


def run_linear(cfg: dict[str, Any], ctx) -> dict[str, Any]:
    """Everything Part 1 measures (float64 must already be enabled)."""
    mu = cfg["lin_mu"]
    prob = make_problem(cfg)
    cf = closed_form(prob, mu)
    tr = train_paths(prob, cfg)
    cf_err = max(float(np.linalg.norm(tr[k] - cf[k]) / np.linalg.norm(cf[k])) for k in ("A", "B", "AB", "BA"))

    traj_ab, traj_ba = ga_trajectories(tr["AB"], tr["BA"], prob, cfg)
    delta = traj_ab - traj_ba
    th = theory(prob, delta[0], cfg)
    lemma_rel = float(np.max(np.linalg.norm(delta - th["lemma"], axis=1) / np.linalg.norm(th["lemma"], axis=1)))

    xt = jnp.asarray(prob["xt"])
    dist = np.array([float(re_distance(xt @ a, xt @ b)) for a, b in zip(traj_ab, traj_ba)])
    a_norm = np.linalg.norm(prob["xt"] @ (th["P"] @ delta.T), axis=0)
    ok = a_norm >= 2 * th["b_norm"]
    # t0: first t from which the assumption holds at every later t.
    t0 = next((t for t in range(len(ok)) if ok[t:].all()), None)
    ratio = dist / th["bound"]
    T = cfg["lin_T"]
    ts = np.arange(T + 1)
    if t0 is not None and T - t0 >= 2:
        slope = float(np.polyfit(ts[t0:], np.log(dist[t0:]), 1)[0])
    else:
        slope = float("nan")

    # Orthogonal-support control: X_A X_B^T = 0, so theta_AB = theta_BA and the paths never separate.
    prob_o = make_problem(cfg, orthogonal=True)
    tr_o = train_paths(prob_o, cfg)
    to_ab, to_ba = ga_trajectories(tr_o["AB"], tr_o["BA"], prob_o, cfg)
    xto = jnp.asarray(prob_o["xt"])
    dist_o = np.array([float(re_distance(xto @ a, xto @ b)) for a, b in zip(to_ab, to_ba)])
    scale_o = float(np.mean(np.square(prob_o["xt"] @ to_ab[-1])))

    for t in range(T + 1):
        ctx.log("linear", step=t, distance=dist[t], bound=th["bound"][t], control_distance=dist_o[t])
    return dict(
        closed_form_rel_err=cf_err,
        lemma_rel_err=lemma_rel,
        dist=dist,
        bound=th["bound"],
        ratio=ratio,
        t0=t0,
        t0_formula=th["t0_formula"],
        rho=th["rho"],
        sigma_u=th["sigma_u"],
        pd0_norm=th["pd0_norm"],
        b_norm=th["b_norm"],
        slope=slope,
        control_dist=dist_o,
        control_scale=scale_o,
        xaxb_norm=float(np.abs(prob_o["xa"] @ prob_o["xb"].T).max()),
    )
