"""MUD-HoG: detect sign-flip, additive-noise, label-flip and unreliable clients (PAPERS.md C3).

Paper: Gupta, Luo, Lee, Qin, Ding, "Long-Short History of Gradients is All You
Need: Detecting Malicious and Unreliable Clients in Federated Learning", ESORICS
2022.
Command: ``lgrad run mudhog-detection --quick`` (``--full``: 28x28 images, more rounds).

Setup: 40 clients on MNIST-5k (4,000 train / 1,000 test), Dirichlet(alpha) label
skew, multinomial logistic regression; every round each client runs
``local_steps`` SGD steps (batch 32) from the global model and sends its model
change Delta. Clients 0-4 flip the sign (-Delta, the authors' omniscient client
with scale 1), 5-9 add N(0, noise_std^2) to Delta (authors: std 0.1), 10-14 flip
label 1 to 7 (the authors' targeted label flipping), 15-18 are unreliable (benign,
but half of their images are box-blurred and noised), 19-39 are benign. The server
runs :mod:`lgrad.robust.mudhog` (detection from round 3, confirmation after 2 / 2
/ 4 / 4 consecutive rounds) and averages the unflagged clients' Delta. Baselines:
FedAvg (mean), coordinate-wise median, Krum (f = 19, all faulty clients), and the
attack-free FedAvg over the benign + unreliable clients (reference). Quick uses
14x14 images (2x2 pooling, d = 1,970) for time.

Quick and full use Dirichlet alpha = 10 (mild label skew) for the claims and
report the detection at alpha = 1 as a finding: at alpha = 1 the honest clients'
long HoGs spread as much as the label flippers' (k-means cannot separate them, see
the ``heterogeneity-alpha1`` finding).

Expected: per-class precision and recall >= 0.9 for each of the four classes by
round 10; MUD-HoG's final accuracy at least that of FedAvg, median and Krum.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad import robust
from lgrad.data import mnist5k, train_test_split
from lgrad.distributed import make_program
from lgrad.distributed.partition import dirichlet
from lgrad.engine import Claim, RunContext, run_loop
from lgrad.robust import mudhog

NAME = "mudhog-detection"
PAPER = "Gupta et al. 2022, Long-Short History of Gradients is All You Need (ESORICS), MUD-HoG"
DESCRIPTION = "MUD-HoG per-class detection (sign flip / noise / label flip / unreliable) and accuracy vs FedAvg, median, Krum."
EXPECTED = "Per-class precision and recall >= 0.9 by round 10; MUD-HoG accuracy >= FedAvg, median and Krum."

_COMMON = dict(
    seed=0,
    n_clients=40,
    n_sign=5,
    n_noise=5,
    n_label=5,
    n_unreliable=4,
    alpha=10.0,
    finding_alphas=[1.0],
    local_steps=10,
    batch_size=32,
    learning_rate=0.1,
    noise_std=0.1,
    flip_source=1,
    flip_target=7,
    unreliable_fraction=0.5,
    unreliable_noise=0.5,
    unreliable_blur=1,
    detect_round=10,
    krum_f=19,
    methods=["MUD-HoG", "FedAvg", "median", "Krum"],
)
CONFIGS = {
    "quick": dict(_COMMON, rounds=30, downsample=2),
    "full": dict(_COMMON, rounds=100, downsample=1),
}
SMOKE = dict(rounds=4, detect_round=4, local_steps=2, methods=["MUD-HoG", "FedAvg"], finding_alphas=[])


def _pool(x: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return np.asarray(x, np.float32)
    s = 28 // k
    return np.asarray(x, np.float32).reshape(-1, s, k, s, k).mean((2, 4)).reshape(-1, s * s)


def _loss(params, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ params["w"] + params["b"], y))


def _setup(cfg):
    ds = mnist5k()
    train, test = train_test_split(ds, 0.2, seed=cfg["seed"])
    n = cfg["n_clients"]
    x = _pool(train.x, cfg["downsample"])
    y = np.asarray(train.y).astype(np.int32)
    parts = dirichlet(y, n, cfg["alpha"], seed=cfg["seed"], min_size=cfg["batch_size"] // 2)
    truth = np.zeros(n, np.int32)
    c = 0
    for cls, k in enumerate([cfg["n_sign"], cfg["n_noise"], cfg["n_label"], cfg["n_unreliable"]], start=1):
        truth[c : c + k] = cls
        c += k
    if c > n:
        raise ValueError(f"{c} faulty clients for n_clients={n}")
    m = max(len(p) for p in parts)
    side = int(round(np.sqrt(x.shape[1])))
    xs = np.zeros((n, m, x.shape[1]), np.float32)
    ys = np.zeros((n, m), np.int32)
    key = jax.random.PRNGKey(cfg["seed"] + 1)
    for i, p in enumerate(parts):
        rows = np.resize(p, m)
        xi, yi = x[rows], y[rows]
        if truth[i] == 3:
            yi = np.asarray(robust.attacks.multi_label_flip(yi, [cfg["flip_source"]], cfg["flip_target"]))
        if truth[i] == 4:
            key, sub = jax.random.split(key)
            xi = np.asarray(robust.attacks.unreliable(
                jnp.asarray(xi), sub, noise_std=cfg["unreliable_noise"], blur=cfg["unreliable_blur"],
                image_shape=(side, side), fraction=cfg["unreliable_fraction"]))
        xs[i], ys[i] = xi, yi
    counts = np.array([len(p) for p in parts], np.int32)
    return (jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(counts), jnp.asarray(_pool(test.x, cfg["downsample"])),
            jnp.asarray(np.asarray(test.y)), truth)


def _simulate(cfg, data, method: str, *, key, reference: bool = False):
    xs, ys, counts, xt, yt, truth = data
    n, d_in = xs.shape[0], xs.shape[2]
    lr, E, bs = cfg["learning_rate"], cfg["local_steps"], cfg["batch_size"]
    sign = jnp.asarray(truth == 1)
    noise = jnp.asarray(truth == 2)
    keep_ref = jnp.asarray((truth == 0) | (truth == 4))

    def client(global_params, k, x, y, cnt):
        def body(p, kk):
            idx = jax.random.randint(kk, (bs,), 0, cnt)
            g = jax.grad(_loss)(p, x[idx], y[idx])
            return jax.tree.map(lambda a, b: a - lr * b, p, g), None

        p, _ = jax.lax.scan(body, global_params, jax.random.split(k, E))
        return jax.tree.map(lambda a, b: a - b, p, global_params)

    program = make_program(client, n_workers=n, backend="vmap", in_axes=(None, 0, 0, 0, 0))
    params = {"w": jnp.zeros((d_in, 10)), "b": jnp.zeros((10,))}
    dim = d_in * 10 + 10
    det = mudhog.init(n, dim)

    def step_fn(c):
        p, det, k, t = c
        k, k1, k2 = jax.random.split(k, 3)
        deltas = program(p, jax.random.split(k1, n), xs, ys, counts)
        flat, unravel = robust.ravel_stacked(deltas)
        if not reference:
            flat = jnp.where(sign[:, None], -flat, flat)
            flat = jnp.where(noise[:, None], robust.attacks.gaussian_noise(flat, k2, cfg["noise_std"]), flat)
        suspect = jnp.zeros((n,), jnp.int32)
        if reference:
            agg = (keep_ref[:, None] * flat).sum(0) / keep_ref.sum()
        elif method == "MUD-HoG":
            det, suspect = mudhog.update(det, flat)
            agg = mudhog.aggregate(flat, det.flags)
        elif method == "FedAvg":
            agg = robust.mean(flat)
        elif method == "median":
            agg = robust.median(flat)
        elif method == "Krum":
            agg = robust.krum(flat, cfg["krum_f"])
        else:
            raise ValueError(f"unknown method {method!r}")
        p = jax.tree.map(lambda a, b: a + b, p, unravel(agg))
        return (p, det, k, t + 1), {"flags": det.flags, "suspect": suspect}

    def eval_fn(c):
        p = c[0]
        return {"test_acc": jnp.mean(jnp.argmax(xt @ p["w"] + p["b"], -1) == yt)}

    return run_loop(step_fn, (params, det, key, jnp.int32(0)), steps=cfg["rounds"], eval_fn=eval_fn, eval_every=1)


def run(config: dict[str, Any], ctx: RunContext) -> list[Claim]:
    cfg = config
    data = _setup(cfg)
    truth = data[-1]
    key = jax.random.PRNGKey(cfg["seed"])
    results: dict[str, Any] = {}
    bar = ctx.progress(total=len(cfg["methods"]) + 1, desc="methods")
    ref = _simulate(cfg, data, "FedAvg", key=key, reference=True)
    bar.update(1)
    results["attack-free FedAvg"] = ref
    for m in cfg["methods"]:
        results[m] = _simulate(cfg, data, m, key=key)
        bar.update(1)
    bar.close()
    for m, res in results.items():
        for j, s in enumerate(res.eval_steps):
            ctx.log(f"accuracy/{m}", step=int(s), test_acc=float(res.evals["test_acc"][j]))
    acc = {m: float(res.evals["test_acc"][-1]) for m, res in results.items()}

    claims: list[Claim] = []
    if "MUD-HoG" in results:
        flags_hist = np.asarray(results["MUD-HoG"].history["flags"])  # (rounds, n)
        r = min(cfg["detect_round"], len(flags_hist))
        pr = mudhog.precision_recall(flags_hist[r - 1], truth)
        pr_end = mudhog.precision_recall(flags_hist[-1], truth)
        for t in range(len(flags_hist)):
            ctx.log("mudhog/flags", step=t + 1, flags=flags_hist[t])
        ctx.log("summary", truth=truth, precision_recall_round=pr, precision_recall_final=pr_end, final_acc=acc)
        for cls, v in pr.items():
            if v["true"] == 0:
                continue
            claims.append(Claim.at_least(
                f"detect-{cls}-round{r}",
                f"by round {r} MUD-HoG flags the {cls} clients with precision and recall >= 0.9 (min of the two)",
                min(v["precision"], v["recall"]), 0.9,
                note=f"precision {v['precision']:.2f}, recall {v['recall']:.2f} "
                     f"({v['flagged']} flagged as {cls}, {v['true']} true); at the last round: "
                     f"precision {pr_end[cls]['precision']:.2f}, recall {pr_end[cls]['recall']:.2f}"))
        others = {m: a for m, a in acc.items() if m not in ("MUD-HoG", "attack-free FedAvg")}
        if others:
            best = max(others, key=others.get)
            claims.append(Claim.at_least(
                "accuracy-vs-baselines",
                "MUD-HoG's final test accuracy is at least that of FedAvg, median and Krum (MUD-HoG minus the best)",
                acc["MUD-HoG"] - others[best], 0.0,
                note=f"final accuracies {', '.join(f'{m} {a:.3f}' for m, a in acc.items())}; best baseline {best}"))
        _plot(ctx, results, flags_hist, truth, cfg)
    claims.append(Claim.finding("final-accuracy", "final test accuracy of every method", acc))
    for alpha in cfg["finding_alphas"]:
        sub = dict(cfg, alpha=float(alpha))
        d2 = _setup(sub)
        res = _simulate(sub, d2, "MUD-HoG", key=key)
        fh = np.asarray(res.history["flags"])
        r = min(cfg["detect_round"], len(fh))
        pr_a = mudhog.precision_recall(fh[r - 1], d2[-1])
        ctx.log("heterogeneity", alpha=float(alpha), precision_recall_round=pr_a,
                final_acc=float(res.evals["test_acc"][-1]))
        claims.append(Claim.finding(
            f"heterogeneity-alpha{alpha:g}",
            f"per-class [precision, recall] by round {r} with Dirichlet alpha = {alpha:g} (more heterogeneous)",
            {c: [round(v["precision"], 2), round(v["recall"], 2)] for c, v in pr_a.items()},
            note=f"final accuracy {float(res.evals['test_acc'][-1]):.3f}"))
    return claims


def _plot(ctx, results, flags_hist, truth, cfg) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for m, res in results.items():
        a1.plot(res.eval_steps, res.evals["test_acc"], label=m, lw=1.4, ls="--" if m.startswith("attack") else "-")
    a1.set_xlabel("round")
    a1.set_ylabel("test accuracy")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    a1.set_title("global model accuracy")
    im = a2.imshow(flags_hist.T, aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest",
                   extent=(0.5, len(flags_hist) + 0.5, len(truth) - 0.5, -0.5))
    for c in range(1, 5):
        rows = np.flatnonzero(truth == c)
        if len(rows):
            a2.axhspan(rows[0] - 0.5, rows[-1] + 0.5, xmin=0, xmax=0.02, color=plt.cm.tab10(c))
    a2.axvline(cfg["detect_round"] + 0.5, color="k", ls=":", lw=1)
    a2.set_xlabel("round")
    a2.set_ylabel("client (0-4 sign, 5-9 noise, 10-14 label, 15-18 unreliable)")
    a2.set_title("MUD-HoG confirmed class per client (colour = " + ", ".join(
        f"{i}:{n}" for i, n in enumerate(mudhog.CLASSES)) + ")", fontsize=8)
    fig.colorbar(im, ax=a2, ticks=range(5))
    fig.tight_layout()
    ctx.savefig(fig, "detection.png", dpi=90)
