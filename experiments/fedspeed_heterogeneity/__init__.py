"""FedSpeed vs FedAvg under client heterogeneity (least squares and MNIST-5k).

Paper: Y. Sun, L. Shen, T. Huang, L. Ding, D. Tao, "FedSpeed: Larger Local Interval,
Less Communication Round, and Higher Generalization Accuracy", ICLR 2023. The
project's account: ``docs/papers/fedspeed-heterogeneity.md``.

FedSpeed (``lgrad.federated._fedspeed.fedspeed``): K local steps
``x <- x - eta (g~ - ghat_i + (x - x^t) / lam)`` on the perturbed gradient
``g~ = (1 - a) g1 + a grad f(x + rho g1 / |g1|)`` (``lgrad.optim._sam``), then
``ghat_i <- ghat_i - (x_K - x^t) / lam``; the server averages ``x_K - lam ghat_i``
(paper form) or, as the authors' code does, ``mean_S(x_K) - lam mean_all(ghat)``
(code form). FedAvg is ``server_algorithm(local_training(optax.sgd(eta), ...))``
with the same K, eta, batch and uniform weights.

Three parts:

1. Heterogeneous least squares (float64, n = 10 clients with their own A_i, b_i,
   full-batch gradients): FedSpeed with rho = 0 converges to the global optimum x*
   (its correction removes client drift) while FedAvg with the same K stops at a
   biased point.
2. The code-form and paper-form aggregations, run side by side with rho > 0 under
   full participation, give the same models to 1e-12 (float64); under partial
   participation they differ (reported as a finding).
3. MNIST-5k (14x14 pooled in quick), Dirichlet label skew alpha in {0.1, 0.3, 1},
   10 clients, >= 3 seeds (the partition and the init change with the seed): the
   test accuracy of FedSpeed and FedAvg after the same number of rounds; all
   settings run in one ``vmap`` per method inside ``lgrad.train.run_loop``. A
   rho = 0 ablation (FedSpeed without the perturbation) is a finding.

Command: ``lgrad run fedspeed-heterogeneity --quick``.
Expected: ``|x_FedSpeed - x*| < 1e-3`` while ``|x_FedAvg - x*| >= 1e-2``; code and
paper aggregations agree to 1e-12 under full participation; FedSpeed's MNIST-5k
accuracy >= FedAvg's at every alpha (seed mean), and the gap grows as alpha falls
(the paper and the authors' README: the advantage widens with heterogeneity).

Config history: the values below are the first ones run (no criterion or config
value was changed after seeing a result).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad import federated
from lgrad.data import average_pool, mnist5k, train_test_split
from lgrad.distributed.partition import dirichlet
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Bool, Choice, Float, Int
from lgrad.federated._fedspeed import fedspeed

NAME = "fedspeed-heterogeneity"
PAPER = "Sun et al. 2023, FedSpeed: Larger Local Interval, Less Communication Round, and Higher Generalization Accuracy (ICLR)"
DESCRIPTION = "FedSpeed vs FedAvg: exact convergence on heterogeneous least squares, code vs paper aggregation, MNIST-5k under Dirichlet skew."
EXPECTED = (
    "least squares: FedSpeed (rho=0) |x-x*| < 1e-3, FedAvg >= 1e-2; code == paper aggregation to 1e-12 (full "
    "participation); MNIST-5k: FedSpeed accuracy >= FedAvg's at each alpha, gap growing as alpha falls."
)
CRITERIA = {
    "ls_fedspeed_error": 1e-3,  # |x_FedSpeed - x*| after ls_rounds (at most)
    "ls_fedavg_error": 1e-2,  # |x_FedAvg - x*| after ls_rounds (at least)
    "aggregation_agreement": 1e-12,  # max |x_code - x_paper| over all rounds, full participation
    "accuracy_gap": 0.0,  # FedSpeed - FedAvg test accuracy, seed mean, per alpha (at least)
}

_COMMON = dict(
    seed=0,
    # part 1-2: least squares (float64)
    ls_clients=10, ls_dim=10, ls_rows=30, ls_local_steps=10, ls_lam=1.0, ls_rho=0.1, ls_partial=0.5,
    # part 3: MNIST-5k
    n_clients=10, dirichlet_alphas=[0.1, 0.3, 1.0], local_steps=10, batch_size=32, learning_rate=0.1,
    lam=10.0, rho=0.1, mix_alpha=1.0, rho0_ablation=True,
)
CONFIGS = {
    "quick": dict(_COMMON, ls_rounds=100, rounds=30, n_seeds=3, downsample=2, hidden=0),
    "full": dict(_COMMON, ls_rounds=300, rounds=100, n_seeds=5, downsample=1, hidden=64),
}
SMOKE = dict(ls_rounds=5, rounds=2, n_seeds=1, dirichlet_alphas=[0.3, 1.0], local_steps=2, ls_local_steps=2,
             rho0_ablation=False)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "ls_clients": Int(min=2, max=1000),
    "ls_dim": Int(min=1, max=1000),
    "ls_rows": Int(min=1, max=10**5),
    "ls_local_steps": Int(min=1, max=10**4),
    "ls_lam": Float(gt=0),
    "ls_rho": Float(min=0),
    "ls_partial": Float(gt=0, max=1),
    "ls_rounds": Int(min=1, max=10**5),
    "n_clients": Int(min=2, max=200),
    "dirichlet_alphas": Float(gt=0),
    "local_steps": Int(min=1, max=10**4),
    "batch_size": Int(min=1, max=4096),
    "learning_rate": Float(gt=0),
    "lam": Float(gt=0),
    "rho": Float(min=0),
    "mix_alpha": Float(min=0, max=1),
    "rho0_ablation": Bool(),
    "rounds": Int(min=1, max=10**5),
    "n_seeds": Int(min=1, max=100),
    "downsample": Choice(1, 2, 4),
    "hidden": Int(min=0, max=4096),
}


# ----------------------------------------------------------------------------- least squares
def _ls_problem(cfg):
    """Client i: A_i (rows, d) with its own column scales, b_i = A_i x_i + noise with
    its own x_i (strong heterogeneity); x* minimises the uniform mean of the losses."""
    n, m, d = cfg["ls_clients"], cfg["ls_rows"], cfg["ls_dim"]
    rng = np.random.default_rng(cfg["seed"])
    a = np.stack([rng.normal(size=(m, d)) * rng.uniform(0.3, 2.0, size=d) for _ in range(n)])
    b = np.einsum("imd,id->im", a, 3.0 * rng.normal(size=(n, d))) + 0.1 * rng.normal(size=(n, m))
    hess = np.einsum("imd,ime->de", a, a) / (n * m)
    xstar = np.linalg.solve(hess, np.einsum("imd,im->d", a, b) / (n * m))
    smooth = max(np.linalg.eigvalsh(a[i].T @ a[i] / m).max() for i in range(n))
    return a, b, xstar, smooth


def _ls_loss(x, batch):
    a, b = batch
    r = a @ x - b
    return 0.5 * jnp.mean(r * r)


def _ls_algorithms(cfg, lr):
    n, k, lam = cfg["ls_clients"], cfg["ls_local_steps"], cfg["ls_lam"]
    fs = lambda **kw: fedspeed(_ls_loss, n_clients=n, learning_rate=lr, local_steps=k, lam=lam, **kw)  # noqa: E731
    return {
        "FedAvg": federated.server_algorithm(federated.local_training(optax.sgd(lr), _ls_loss, local_steps=k),
                                             n_clients=n, weighted=False),
        "FedSpeed rho=0": fs(rho=0.0),
        "paper": fs(rho=cfg["ls_rho"], aggregation="paper"),
        "code": fs(rho=cfg["ls_rho"], aggregation="code"),
        "paper partial": fs(rho=cfg["ls_rho"], aggregation="paper", participation=cfg["ls_partial"]),
        "code partial": fs(rho=cfg["ls_rho"], aggregation="code", participation=cfg["ls_partial"]),
    }


def _least_squares(cfg, progress=None) -> dict[str, Any]:
    """All least-squares runs in one float64 ``run_loop``: per round |x - x*| of every
    algorithm and |x_code - x_paper| (full and partial participation)."""
    with jax.enable_x64(True):
        a, b, xstar, smooth = _ls_problem(cfg)
        algs = _ls_algorithms(cfg, 0.5 / smooth)
        data = federated.ClientData((jnp.asarray(a), jnp.asarray(b)), jnp.full(cfg["ls_clients"], a.shape[1], jnp.int32))
        x0 = jnp.zeros(cfg["ls_dim"], jnp.float64)
        states = {k: alg.init(None, x0) for k, alg in algs.items()}

        def step(carry):
            states, key = carry
            key, sub = jax.random.split(key)
            new = {k: algs[k].round(s, data, sub)[0] for k, s in states.items()}
            err = {k: jnp.linalg.norm(s.params - xstar) for k, s in new.items()}
            err["code-paper"] = jnp.max(jnp.abs(new["code"].params - new["paper"].params))
            err["code-paper partial"] = jnp.max(jnp.abs(new["code partial"].params - new["paper partial"].params))
            return (new, key), err

        res = run_loop(step, (states, jax.random.PRNGKey(cfg["seed"])), steps=cfg["ls_rounds"], progress=progress)
        hist = {k: np.asarray(v, np.float64) for k, v in res.history.items()}
    return {"hist": hist, "lr": 0.5 / smooth, "xstar_norm": float(np.linalg.norm(xstar))}


# ----------------------------------------------------------------------------- MNIST-5k
def _mnist_data(cfg):
    """Every (alpha, seed) setting's client shards, padded to one common size M so the
    settings stack: arrays (S, n, M, d), (S, n, M); counts (S, n)."""
    train, test = train_test_split(mnist5k(), 0.2, seed=cfg["seed"])
    x, y = average_pool(train.x, cfg["downsample"]), np.asarray(train.y, np.int32)
    settings = [(a, cfg["seed"] + s) for a in cfg["dirichlet_alphas"] for s in range(cfg["n_seeds"])]
    parts = [dirichlet(y, cfg["n_clients"], a, seed=s, min_size=cfg["batch_size"] // 4) for a, s in settings]
    m = max(len(p) for ps in parts for p in ps)
    rows = np.stack([np.stack([np.resize(p, m) for p in ps]) for ps in parts])  # a client's own rows repeat
    counts = np.array([[len(p) for p in ps] for ps in parts], np.int32)
    clients = federated.ClientData((jnp.asarray(x[rows]), jnp.asarray(y[rows])), jnp.asarray(counts))
    test_xy = (jnp.asarray(average_pool(test.x, cfg["downsample"])), jnp.asarray(np.asarray(test.y, np.int32)))
    return clients, test_xy, settings


def _model(hidden: int, d_in: int):
    def init(key):
        if hidden == 0:
            return {"w": jnp.zeros((d_in, 10)), "b": jnp.zeros(10)}
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in), "b1": jnp.zeros(hidden),
                "w2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), "b2": jnp.zeros(10)}

    def apply(p, x):
        if hidden == 0:
            return x @ p["w"] + p["b"]
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return init, apply


def _mnist_algorithm(cfg, method: str, loss):
    n, k, lr, bs = cfg["n_clients"], cfg["local_steps"], cfg["learning_rate"], cfg["batch_size"]
    if method == "FedAvg":
        client = federated.local_training(optax.sgd(lr), loss, local_steps=k, batch_size=bs)
        return federated.server_algorithm(client, n_clients=n, weighted=False)
    rho = 0.0 if method == "FedSpeed rho=0" else cfg["rho"]
    return fedspeed(loss, n_clients=n, learning_rate=lr, local_steps=k, lam=cfg["lam"], rho=rho,
                    alpha=cfg["mix_alpha"], batch_size=bs)


def _mnist_run(cfg, method, clients, test_xy, progress=None) -> np.ndarray:
    """Test accuracy per round (rounds + 1, settings) of ``method``, every setting at once."""
    init, apply = _model(cfg["hidden"], test_xy[0].shape[1])

    def loss(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, batch[0]), batch[1]).mean()

    alg = _mnist_algorithm(cfg, method, loss)
    n_set = clients.count.shape[0]
    keys = jax.random.split(jax.random.PRNGKey(cfg["seed"]), n_set)
    states = jax.vmap(lambda k: alg.init(None, init(k)))(keys)
    rnd = jax.vmap(lambda s, arr, cnt, k: alg.round(s, federated.ClientData(arr, cnt), k)[0])

    def accuracy(params):
        return jnp.mean(jnp.argmax(apply(params, test_xy[0]), -1) == test_xy[1])

    def step(carry):
        states, keys, arrays, counts = carry
        keys, sub = jax.vmap(jax.random.split, out_axes=1)(keys)
        states = rnd(states, arrays, counts, sub)
        return (states, keys, arrays, counts), {"acc": jax.vmap(accuracy)(states.params)}

    res = run_loop(step, (states, keys, clients.arrays, clients.count), steps=cfg["rounds"], progress=progress)
    acc0 = jax.vmap(accuracy)(states.params)
    return np.concatenate([np.asarray(acc0)[None], np.asarray(res.history["acc"])], 0)


def _mnist(cfg, ctx: RunContext) -> dict[str, Any]:
    clients, test_xy, settings = _mnist_data(cfg)
    methods = ["FedAvg", "FedSpeed"] + (["FedSpeed rho=0"] if cfg["rho0_ablation"] else [])
    curves = {}
    for m in methods:
        with ctx.variant(m):
            curves[m] = _mnist_run(cfg, m, clients, test_xy, ctx.progress)
    n_a, n_s = len(cfg["dirichlet_alphas"]), cfg["n_seeds"]
    final = {m: c[-1].reshape(n_a, n_s) for m, c in curves.items()}
    for m, c in curves.items():
        for j, (a, s) in enumerate(settings):
            ctx.log_history(f"mnist/{m}/alpha={a:g}/seed={s}", {"test_acc": c[:, j]}, every=5)
    return {"curves": curves, "final": final, "settings": settings}


def _ls_summary(ls) -> dict[str, Any]:
    """The least-squares measurements: final |x - x*| per run, max |x_code - x_paper| over the rounds."""
    h = ls["hist"]
    diffs = ("code-paper", "code-paper partial")
    return {"final": {k: float(v[-1]) for k, v in h.items() if k not in diffs},
            "max_difference": {k: float(np.max(h[k])) for k in diffs}, "lr": ls["lr"], "xstar_norm": ls["xstar_norm"]}


# ----------------------------------------------------------------------------- claims
def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """``least_squares``: :func:`_ls_summary`; ``mnist_final``: test accuracy after the last
    round per method, (alphas, seeds) (float32)."""
    cfg = dict(config)
    ls = _least_squares(cfg, ctx.progress)
    ctx.log_history("least_squares", ls["hist"], every=5)
    mn = _mnist(cfg, ctx)
    _plot(ctx, cfg, ls, mn)
    return {"least_squares": _ls_summary(ls), "mnist_final": {m: v.tolist() for m, v in mn["final"].items()}}


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The claims from the measurements and ``CRITERIA``."""
    final = {m: np.asarray(v, np.float32) for m, v in measurements["mnist_final"].items()}  # as measured
    return _ls_claims(config, measurements["least_squares"]) + _mnist_claims(config, {"final": final})


def _ls_claims(cfg, ls) -> list[Claim]:
    h, d, r = ls["final"], ls["max_difference"], cfg["ls_rounds"]
    setting = (f"{cfg['ls_clients']} clients, d = {cfg['ls_dim']}, K = {cfg['ls_local_steps']}, "
               f"eta = 0.5/L = {ls['lr']:.4f}, lam = {cfg['ls_lam']:g}, {r} rounds, float64")
    partial = {k: h[k] for k in ("paper partial", "code partial")}
    return [
        Claim.at_most(
            "ls-fedspeed-exact",
            f"FedSpeed with rho = 0 reaches |x - x*| < {CRITERIA['ls_fedspeed_error']:g} on heterogeneous least "
            f"squares ({setting})", h["FedSpeed rho=0"], CRITERIA["ls_fedspeed_error"],
            note=f"|x*| = {ls['xstar_norm']:.3f}; with rho = {cfg['ls_rho']:g} (paper form) the final error is "
                 f"{h['paper']:.3g}: the ascent step of fixed radius keeps a bias of order rho"),
        Claim.at_least(
            "ls-fedavg-drift",
            f"FedAvg with the same K, eta and rounds stays at |x - x*| >= {CRITERIA['ls_fedavg_error']:g} "
            "(client drift)", h["FedAvg"], CRITERIA["ls_fedavg_error"]),
        Claim.at_most(
            "aggregation-code-equals-paper",
            f"under full participation the authors' code-form aggregation (mean_S x_K - lam mean_all ghat) and "
            f"the paper's (mean_S (x_K - lam ghat_i)) give the same models, max over {r} rounds (rho = "
            f"{cfg['ls_rho']:g})", d["code-paper"], CRITERIA["aggregation_agreement"]),
        Claim.finding(
            "aggregation-partial-participation",
            f"with participation {cfg['ls_partial']:g} the two aggregations differ: max |x_code - x_paper| "
            "and the final |x - x*| of each", {"max_difference": d["code-paper partial"], **partial},
            note="the same clients are sampled in both runs; the code form averages the corrections of all "
                 "clients, the paper's only of the sampled ones, so each paper-form round moves the model by "
                 "-lam mean_S(ghat_i), which is not zero at x* (the corrections sum to zero only over all "
                 "clients): here the paper form does not settle and the code form does"),
    ]


def _mnist_claims(cfg, mn) -> list[Claim]:
    alphas, fin = cfg["dirichlet_alphas"], mn["final"]
    gap = fin["FedSpeed"] - fin["FedAvg"]  # (alphas, seeds)
    out = []
    for i, a in enumerate(alphas):
        out.append(Claim.at_least(
            f"mnist-accuracy-alpha{a:g}",
            f"MNIST-5k, Dirichlet alpha = {a:g}, {cfg['n_clients']} clients, {cfg['rounds']} rounds: FedSpeed's "
            f"test accuracy minus FedAvg's (mean over {cfg['n_seeds']} seeds)", float(gap[i].mean()),
            CRITERIA["accuracy_gap"],
            note=f"per seed {np.round(gap[i], 4).tolist()} (std {gap[i].std():.4f}); FedAvg "
                 f"{fin['FedAvg'][i].mean():.4f}, FedSpeed {fin['FedSpeed'][i].mean():.4f}; FedSpeed spends two "
                 "gradient evaluations per local step (rho > 0), FedAvg one"))
    order = np.argsort(alphas)
    means = gap.mean(1)[order]
    if len(alphas) >= 2:
        out.append(Claim.holds(
            "gap-grows-as-alpha-falls",
            "the accuracy gap FedSpeed - FedAvg (seed mean) grows as the Dirichlet alpha falls (more heterogeneity)",
            {f"alpha={alphas[j]:g}": float(gap[j].mean()) for j in order}, "gap strictly decreasing in alpha",
            bool(np.all(np.diff(means) < 0))))
    if "FedSpeed rho=0" in fin:
        out.append(Claim.finding(
            "ablation-rho0",
            "FedSpeed without the perturbation (rho = 0): test accuracy per alpha (seed mean), next to FedSpeed",
            {f"alpha={a:g}": {"rho=0": float(fin["FedSpeed rho=0"][i].mean()), "rho": float(fin["FedSpeed"][i].mean())}
             for i, a in enumerate(alphas)},
            note="separates the prox-correction's share of the gain from the ascent step's"))
    return out


def _plot(ctx: RunContext, cfg, ls, mn) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    h = ls["hist"]
    rounds = np.arange(1, cfg["ls_rounds"] + 1)
    for k in ("FedAvg", "FedSpeed rho=0", "paper", "code partial", "paper partial"):
        lab = {"paper": f"FedSpeed rho={cfg['ls_rho']:g}"}.get(k, k if "partial" not in k else
                                                               f"FedSpeed {k.split()[0]} form, p={cfg['ls_partial']:g}")
        a1.plot(rounds, np.maximum(h[k], 1e-16), label=lab, lw=1.3)
    a1.plot(rounds, np.maximum(h["code-paper"], 1e-17), "k:", lw=1, label="|code - paper|, full participation")
    a1.axhline(CRITERIA["ls_fedspeed_error"], color="grey", lw=0.6, ls="--")
    a1.set(yscale="log", xlabel="round", ylabel="|x - x*|", title="heterogeneous least squares (float64)")
    a1.legend(fontsize=7)
    alphas, fin = np.asarray(cfg["dirichlet_alphas"]), mn["final"]
    for m, f in fin.items():
        a2.errorbar(alphas, f.mean(1), yerr=f.std(1), marker="o", capsize=3, label=m)
    a2.set(xscale="log", xlabel="Dirichlet alpha", ylabel=f"test accuracy after {cfg['rounds']} rounds",
           title=f"MNIST-5k, {cfg['n_clients']} clients, {cfg['n_seeds']} seeds")
    a2.legend(fontsize=8)
    for m, c in mn["curves"].items():
        for i, a in enumerate(alphas):
            sl = slice(i * cfg["n_seeds"], (i + 1) * cfg["n_seeds"])
            a3.plot(c[:, sl].mean(1), lw=1.2, ls=["-", "--", ":"][list(fin).index(m) % 3],
                    color=plt.cm.viridis(i / max(1, len(alphas) - 1)), label=f"{m}, alpha={a:g}")
    a3.set(xlabel="round", ylabel="test accuracy (seed mean)", title="accuracy per round", ylim=(0, 1))
    a3.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    ctx.savefig(fig, "fedspeed.png", dpi=90)
