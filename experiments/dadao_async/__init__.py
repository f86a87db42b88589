"""DADAO on 10-node ridge regression vs synchronous D-SGD (docs/papers/dadao-async.md).

Paper: Nabli & Oyallon, "DADAO: Decoupled Accelerated Decentralized Asynchronous
Optimization" (ICML 2023). The simulator is ``lgrad.federated._dadao``: per-node state
(x, x~, y, y~, z, z~), the linear ODE between events solved exactly (matrix
exponential), gradient events at rate 1 per node, communication events at rate
sqrt(2 chi_1 chi_2) on uniform edges, pre-sampled and replayed by one ``lax.scan``.
The baseline is D-SGD (full local gradients, Metropolis-Hastings gossip) built from
``federated.worker_algorithm(federated.decentralized(optax.sgd(1/L), gossip_mix(W)))``.

Setting (float64): n = 10 nodes on a connected Erdos-Renyi graph (p = 0.4), node i
holds ``samples`` rows x ~ N(s_i, I) (a per-node shift s_i: heterogeneous) with
y = x'w + noise; f_i(x) = (1/m)||X_i x - y_i||^2 + r||x||^2; mu and L are the
extreme eigenvalues of the local Hessians (the paper's convention); x* minimises
sum_i f_i (closed form); x0 = 0 on every node; error (1/n) sum_i ||x_i - x*||^2 with
every node advanced to the same time.

Command: ``lgrad run dadao-async --quick``.
Expected: sum_i z_i = sum_i z~_i = 0 to 1e-12 throughout; log10(error) falls
linearly (slope < 0, R^2 >= 0.9) down to 1e-6; the simulator equals an event-by-event
numpy/scipy replay; gradient and communication counts to reach 1e-2, 1e-3, 1e-6
reported next to D-SGD's (which stalls at a bias floor: a constant step on
heterogeneous nodes).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from lgrad import federated
from lgrad.distributed import topology
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Float, Int
from lgrad.federated import _dadao as dadao

NAME = "dadao-async"
PAPER = "Nabli & Oyallon 2023, DADAO: Decoupled Accelerated Decentralized Asynchronous Optimization (ICML)"
DESCRIPTION = "DADAO (event simulator, exact ODE) on 10-node ridge regression vs synchronous D-SGD."
EXPECTED = (
    "sum z = sum z~ = 0 to 1e-12; log-error linear down to 1e-6; simulator == numpy replay; gradient / "
    "communication counts vs D-SGD reported"
)
CRITERIA = {
    "invariant": 1e-12,  # max |sum_i z_i|, |sum_i z~_i| over all records and seeds
    "target_error": 1e-6,  # (1/n) sum_i |x_i - x*|^2 to reach
    "r2": 0.9,  # R^2 of the line through log10(error) until the target
    "replay": 1e-10,  # max |lax.scan state - numpy replay| after `replay_events` events
}
TARGETS = (1e-2, 1e-3, 1e-6)  # accuracies at which the counts are compared
X64 = True

_COMMON = dict(seed=0, n_nodes=10, edge_p=0.4, dim=10, samples=20, ridge=0.1, noise=0.1, shift=1.0,
               record_every=20, replay_events=300, dsgd_lr_scale=1.0)
CONFIGS = {
    "quick": dict(_COMMON, n_seeds=3, n_events=60000, dsgd_rounds=6000),
    "full": dict(_COMMON, n_seeds=10, n_events=400000, dsgd_rounds=40000),
}
SMOKE = dict(n_seeds=1, n_events=2000, dsgd_rounds=100, replay_events=20)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "n_nodes": Int(min=2, max=1000),
    "edge_p": Float(gt=0, max=1),
    "dim": Int(min=1, max=10**4),
    "samples": Int(min=1, max=10**5),
    "ridge": Float(gt=0),
    "noise": Float(min=0),
    "shift": Float(min=0),
    "record_every": Int(min=1, max=10**5),
    "replay_events": Int(min=1, max=10**4),
    "dsgd_lr_scale": Float(gt=0, max=2),
    "n_seeds": Int(min=1, max=100),
    "n_events": Int(min=1, max=10**8),
    "dsgd_rounds": Int(min=1, max=10**7),
}


def check_config(config: dict[str, Any]) -> None:
    if config["n_events"] % config["record_every"]:
        raise ValueError(f"n_events={config['n_events']}: must be a multiple of record_every={config['record_every']}")


# ----------------------------------------------------------------------------- problem
def _problem(cfg, seed: int) -> dict[str, Any]:
    """Heterogeneous ridge regression on n nodes: data, mu, L, x*, graph."""
    rng = np.random.default_rng(seed)
    n, m, d, r = cfg["n_nodes"], cfg["samples"], cfg["dim"], cfg["ridge"]
    x = rng.standard_normal((n, m, d)) + cfg["shift"] * rng.standard_normal((n, 1, d))
    w = rng.standard_normal(d) / np.sqrt(d)
    y = x @ w + cfg["noise"] * rng.standard_normal((n, m))
    hess = np.stack([2 / m * x[i].T @ x[i] + 2 * r * np.eye(d) for i in range(n)])
    eig = np.concatenate([np.linalg.eigvalsh(h) for h in hess])
    x_star = np.linalg.solve(hess.sum(0), sum(2 / m * x[i].T @ y[i] for i in range(n)))
    adj = topology.erdos_renyi(n, cfg["edge_p"], seed=seed)
    return dict(x=x, y=y, mu=float(eig.min()), L=float(eig.max()), x_star=x_star, adj=adj)


def _grad_fn(p, ridge):
    xj, yj = jnp.asarray(p["x"]), jnp.asarray(p["y"])
    m = xj.shape[1]
    return lambda v, i: 2 / m * xj[i].T @ (xj[i] @ v - yj[i]) + 2 * ridge * v


def _loss_fn(ridge):
    def loss(v, batch):
        xb, yb = batch
        return jnp.mean((xb @ v - yb) ** 2) + ridge * jnp.sum(v**2)

    return loss


# ----------------------------------------------------------------------------- runs
def _run_dadao(cfg, p, seed: int) -> dict[str, Any]:
    edges, chi1, chi2 = dadao.dadao_graph(p["adj"])
    c = dadao.dadao_constants(p["mu"], p["L"], chi1, chi2)
    events = dadao.dadao_events(jax.random.PRNGKey(seed), cfg["n_events"], n_nodes=cfg["n_nodes"], edges=edges,
                                lam_mix=c.lam_mix)
    state = dadao.dadao_init(jnp.zeros((cfg["n_nodes"], cfg["dim"])))
    _, hist = dadao.dadao_simulate(_grad_fn(p, cfg["ridge"]), state, events, c, record_every=cfg["record_every"],
                                   x_star=p["x_star"])
    hist = {k: np.asarray(v) for k, v in hist.items()}
    replay = _replay_error(cfg, p, c, events)
    return dict(hist=hist, constants=c._asdict(), edges=len(edges), replay=replay)


def _replay_error(cfg, p, c, events) -> float:
    """max |simulator - numpy/scipy event-by-event replay| after the first ``replay_events`` events."""
    k = min(cfg["replay_events"], cfg["n_events"])
    ev = jax.tree.map(lambda v: v[:k], events)
    state = dadao.dadao_init(jnp.zeros((cfg["n_nodes"], cfg["dim"])))
    got, _ = dadao.dadao_simulate(_grad_fn(p, cfg["ridge"]), state, ev, c, record_every=k)
    ref_s, ref_t = _numpy_replay(cfg, p, c, jax.tree.map(np.asarray, ev))
    return float(max(np.max(np.abs(np.asarray(got.s) - ref_s)), np.max(np.abs(np.asarray(got.t_last) - ref_t))))


def _numpy_replay(cfg, p, c, ev):
    """The paper's event updates written directly in numpy, scipy.linalg.expm for the ODE."""
    n, d, m, r = cfg["n_nodes"], cfg["dim"], cfg["samples"], cfg["ridge"]
    mat = np.zeros((6, 6))
    mat[0, :2], mat[1, :2] = [-c.eta, c.eta], [c.eta, -c.eta]
    mat[2, 2:4] = [-c.alpha, c.alpha]
    mat[3, [1, 2, 4]] = [-c.theta * c.nu, -c.theta, -c.theta]
    mat[4, 4:6], mat[5, 4:6] = [-c.alpha, c.alpha], [c.alpha_tilde, -c.alpha_tilde]
    s, t_last = np.zeros((n, 6, d)), np.zeros(n)
    for t, is_grad, a, b in zip(ev.times, ev.is_grad, ev.a, ev.b):
        for i in {int(a), int(b)}:
            s[i] = scipy.linalg.expm(mat * (t - t_last[i])) @ s[i]
            t_last[i] = t
        if is_grad:
            xi = s[a, 0]
            g = 2 / m * p["x"][a].T @ (p["x"][a] @ xi - p["y"][a]) + 2 * r * xi - c.nu * xi - s[a, 3]
            s[a, 0] -= c.gamma * g
            s[a, 1] -= c.gamma_tilde * g
            s[a, 3] += c.delta * g
        else:
            q = (s[a, 2] + s[a, 4]) - (s[b, 2] + s[b, 4])
            s[a, 4], s[b, 4] = s[a, 4] - 0.5 * q, s[b, 4] + 0.5 * q
            s[a, 5], s[b, 5] = s[a, 5] - c.beta_tilde * q, s[b, 5] + c.beta_tilde * q
    return s, t_last


def _run_dsgd(cfg, p) -> dict[str, Any]:
    """D-SGD with step dsgd_lr_scale / L through the federated layer; error per round."""
    n, m = cfg["n_nodes"], cfg["samples"]
    alg = dadao.dsgd_baseline(_loss_fn(cfg["ridge"]), p["adj"], learning_rate=cfg["dsgd_lr_scale"] / p["L"],
                              n_workers=n)
    data = federated.ClientData((jnp.asarray(p["x"]), jnp.asarray(p["y"])), np.full(n, m, np.int32))
    placed = federated.shard_workers(data, n_workers=n, backend="vmap")
    xs = jnp.asarray(p["x_star"])

    def step(carry):
        state, key = carry
        key, sub = jax.random.split(key)
        state, _ = alg.round(state, placed, sub)
        return (state, key), {"error": jnp.mean(jnp.sum((state.params - xs) ** 2, -1))}

    res = run_loop(step, (alg.init(None, jnp.zeros(cfg["dim"])), jax.random.PRNGKey(0)), steps=cfg["dsgd_rounds"])
    return {"error": np.asarray(res.history["error"]), "bytes_per_round": int(alg.traffic["bytes_sent"])}


# ----------------------------------------------------------------------------- measurement
def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _counts(run, dsgd, n: int, n_edges: int) -> dict[str, Any]:
    """Gradients and edge activations to reach each target, DADAO vs D-SGD (None: not reached)."""
    h, out = run["hist"], {}
    for eps in TARGETS:
        k = _first(h["error"] <= eps)
        r = _first(dsgd["error"] <= eps)
        out[f"{eps:g}"] = {
            "dadao": None if k is None else {"grads": int(h["n_grad"][k]), "comms": int(h["n_comm"][k]),
                                             "time": float(h["time"][k])},
            "dsgd": None if r is None else {"grads": n * (r + 1), "comms": n_edges * (r + 1), "rounds": r + 1},
        }
    return out


def _fit(h, target: float) -> dict[str, Any]:
    """Line through log10(error) vs time for the records until the error first reaches ``target``."""
    k = _first(h["error"] <= target)
    stop = len(h["error"]) if k is None else k + 1
    t, y = h["time"][:stop], np.log10(np.maximum(h["error"][:stop], 1e-300))
    if len(t) < 3:
        return {"reached": k is not None, "slope": float("nan"), "r2": float("nan"), "points": int(len(t))}
    slope, icpt = np.polyfit(t, y, 1)
    r2 = 1 - float(np.sum((y - slope * t - icpt) ** 2)) / float(np.sum((y - y.mean()) ** 2))
    return {"reached": k is not None, "slope": float(slope), "r2": r2, "points": int(len(t)),
            "final_error": float(h["error"][-1])}


def _summary(cfg, run, dsgd, kappa: float) -> dict[str, Any]:
    """One seed's measurements: invariants, the log-linear fit, replay error, counts vs D-SGD."""
    h = run["hist"]
    return {
        "invariant": max(float(np.max(h["sum_z"])), float(np.max(h["sum_z_tilde"]))),
        "fit": _fit(h, CRITERIA["target_error"]), "replay": run["replay"], "kappa": kappa, "edges": run["edges"],
        "lam_mix": float(run["constants"]["lam_mix"]), "dsgd_final_error": float(dsgd["error"][-1]),
        "counts": _counts(run, dsgd, cfg["n_nodes"], run["edges"]),
    }


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Per seed (:func:`_summary`); ``fit_target``: the error the log-linear fit stops at."""
    cfg = dict(config)
    seeds = [cfg["seed"] + s for s in range(cfg["n_seeds"])]
    runs, base, per_seed = [], [], []
    for s in ctx.progress(seeds, desc="seeds"):
        p = _problem(cfg, s)
        runs.append(_run_dadao(cfg, p, s))
        base.append(_run_dsgd(cfg, p))
        per_seed.append(_summary(cfg, runs[-1], base[-1], p["L"] / p["mu"]))
    for s, r, b in zip(seeds, runs, base):
        ctx.log_history(f"dadao/seed{s}", {k: r["hist"][k] for k in ("time", "n_grad", "n_comm", "error", "sum_z",
                                                                       "sum_z_tilde")}, every=5)
        ctx.log_history(f"dsgd/seed{s}", {"error": b["error"]}, every=20)
    ctx.log("summary", constants=[r["constants"] for r in runs], kappa=[m["kappa"] for m in per_seed],
            edges=[r["edges"] for r in runs], counts=[m["counts"] for m in per_seed], fits=[m["fit"] for m in per_seed])
    _plot(ctx, cfg, runs, base, seeds)
    return {"per_seed": per_seed, "fit_target": CRITERIA["target_error"]}


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The claims from the per-seed measurements and ``CRITERIA``."""
    cfg, ms = config, measurements["per_seed"]
    if measurements["fit_target"] != CRITERIA["target_error"]:
        raise ValueError(f"the fits stop at {measurements['fit_target']:g}, CRITERIA['target_error'] is "
                         f"{CRITERIA['target_error']:g}: run the experiment again")
    fits = [m["fit"] for m in ms]
    ok_fit = [f["reached"] and f["slope"] < 0 and f["r2"] >= CRITERIA["r2"] for f in fits]
    return [
        Claim.at_most("sum-z-invariant", "max over every record and seed of |sum_i z_i| and |sum_i z~_i| (all nodes "
                      "advanced to the same time)", max(m["invariant"] for m in ms), CRITERIA["invariant"],
                      note="communication events move z and z~ by opposite amounts on the two ends of the edge; the "
                      "ODE for (z, z~) is the same linear map at every node"),
        Claim.holds("loglinear-to-1e-6", f"DADAO's error (1/n) sum |x_i - x*|^2 reaches {CRITERIA['target_error']:g} "
                    "and log10(error) is linear in time until then (every seed)", {"per_seed": fits},
                    f"reached, slope < 0, R^2 >= {CRITERIA['r2']}", all(ok_fit),
                    note=f"{cfg['n_events']} events per seed; kappa = L/mu per seed: "
                    f"{[round(m['kappa'], 1) for m in ms]}"),
        Claim.at_most("simulator-matches-replay", f"the lax.scan simulator equals a numpy/scipy event-by-event replay "
                      f"after {min(cfg['replay_events'], cfg['n_events'])} events (max abs difference, all states)",
                      max(m["replay"] for m in ms), CRITERIA["replay"]),
        Claim.finding("counts-vs-dsgd", "gradients and edge activations to reach each error, DADAO vs synchronous "
                      "D-SGD (step 1/L, full local gradients; None: not reached)", {"per_seed": [m["counts"] for m in ms]},
                      note=f"D-SGD's final error per seed: {[float('%.2e' % m['dsgd_final_error']) for m in ms]} "
                      "(a constant step on heterogeneous nodes stalls at a bias floor); one D-SGD round = n "
                      "gradients and |E| edge activations"),
        Claim.finding("communications-per-gradient", "expected edge activations per gradient: DADAO lambda_mix / n vs "
                      "D-SGD |E| / n", {"dadao": [m["lam_mix"] / cfg["n_nodes"] for m in ms],
                                        "dsgd": [m["edges"] / cfg["n_nodes"] for m in ms]},
                      note="the paper's point: DADAO's communication rate sqrt(2 chi_1 chi_2) is decoupled from the "
                      "gradient rate"),
    ]


def _plot(ctx: RunContext, cfg, runs, base, seeds) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (s, r, b) in enumerate(zip(seeds, runs, base)):
        c, h = f"C{i % 10}", r["hist"]
        n_e = r["edges"]
        rounds = np.arange(1, len(b["error"]) + 1)
        axes[0].semilogy(h["n_grad"], h["error"], color=c, label=f"DADAO, seed {s}")
        axes[0].semilogy(cfg["n_nodes"] * rounds, b["error"], ":", color=c, label=f"D-SGD, seed {s}")
        axes[1].semilogy(h["n_comm"], h["error"], color=c, label=f"DADAO, seed {s}")
        axes[1].semilogy(n_e * rounds, b["error"], ":", color=c, label=f"D-SGD, seed {s}")
        axes[2].semilogy(h["time"], np.maximum(h["sum_z"], 1e-18), color=c, label=f"|sum z|, seed {s}")
        axes[2].semilogy(h["time"], np.maximum(h["sum_z_tilde"], 1e-18), "--", color=c, label=f"|sum z~|, seed {s}")
    for a, key in zip(axes[:2], ("n_grad", "n_comm")):
        a.axhline(CRITERIA["target_error"], color="k", lw=0.8, ls="--")
        a.set_ylabel("(1/n) sum |x_i - x*|^2")
        a.set_xlim(0, max(float(r["hist"][key][-1]) for r in runs))  # linear axis: a linear rate is a line
    axes[0].set_xlabel("gradient computations")
    axes[1].set_xlabel("edge activations (communications)")
    axes[2].axhline(CRITERIA["invariant"], color="k", lw=0.8, ls="--")
    axes[2].set_xlabel("time")
    axes[2].set_title("invariants max |sum_i z_i|, |sum_i z~_i|")
    axes[0].set_title("error vs gradients")
    axes[1].set_title("error vs communications")
    for a in axes:
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=6)
    fig.tight_layout()
    ctx.savefig(fig, "dadao_vs_dsgd.png", dpi=90)
