"""MoNNA vs D-SGD, CWTM and geometric median under Byzantine attacks (PAPERS.md C1).

Paper: Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative
Learning with Linear Gradient Overhead", ICML 2023 (MoNNA, Algorithm 1).
Command: ``lgrad run monna-robustness --quick`` (``--full`` adds Dirichlet alpha = 5
and more steps).

Setup: heterogeneous multinomial logistic regression on MNIST-5k (4,000 train /
1,000 test images, d = 7,850 in full), n = 26 nodes of which f = 5 Byzantine (the last
five), Dirichlet(alpha) label skew over the 26 nodes, complete graph, every node
batch 32, local Polyak momentum beta = 0.99 for every method (only the mixing rule
differs): MoNNA = NNA mixing; D-SGD = averaging; CWTM = coordinate-wise trimmed
mean (f); GM = smoothed Weiszfeld geometric median. Attacks: sign flip, ALIE
(tau = 1.5), FOE (tau = 2), label flip (y -> 9 - y, data level); with
``line_search`` the ALIE/FOE factor is chosen each step from a grid to maximise
the distance of the defence's output to the honest mean (the authors' code).
Model-level attacks act on the honest nodes' local updates (Byzantine nodes send
mean honest parameters + attack(updates)); see ``lgrad.robust.monna``.
The attack-free reference is D-SGD among the 21 honest nodes alone.

Quick uses alpha = 1 only and 14x14 images (2x2 average pooling, d = 1,970) to
fit ~3 minutes on 2 CPU cores; full uses alpha in {1, 5} and the 28x28 images.

Expected (PAPERS.md C1): NNA with f = 0 equals the mean; under every attack MoNNA's
honest loss (mean over honest nodes of the loss on the honest nodes' training
data) is <= 1.1x the attack-free D-SGD loss while plain averaging fails (> 1.1x).
"""
from __future__ import annotations

import functools
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

NAME = "monna-robustness"
PAPER = "Farhadkhani et al. 2023, Robust Collaborative Learning with Linear Gradient Overhead (ICML), MoNNA"
DESCRIPTION = "MoNNA vs D-SGD / CWTM / geometric median, n=26, f=5, heterogeneous MNIST-5k logistic regression."
EXPECTED = "MoNNA's honest loss <= 1.1x attack-free D-SGD under sign flip, ALIE, FOE and label flip; averaging fails."

_COMMON = dict(
    seed=0,
    n=26,
    f=5,
    batch_size=32,
    learning_rate=0.5,
    beta=0.99,
    alie_tau=1.5,
    foe_tau=2.0,
    line_search=True,
    attacks=["sign_flip", "alie", "foe", "label_flip"],
    methods=["MoNNA", "D-SGD", "CWTM", "GM"],
    eval_every=50,
    ratio=1.1,
)
CONFIGS = {
    "quick": dict(_COMMON, alphas=[1.0], steps=300, downsample=2),
    "full": dict(_COMMON, alphas=[1.0, 5.0], steps=1500, downsample=1, eval_every=25,
                 attacks=["none", "sign_flip", "alie", "foe", "label_flip"]),
}
SMOKE = dict(steps=10, eval_every=5, attacks=["alie"], methods=["MoNNA", "D-SGD"], line_search=False)

LS_GRID = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _loss(params, x, y):
    logits = x @ params["w"] + params["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _mix(method: str, f: int):
    return {
        "MoNNA": robust.nna_mixing(f),
        "D-SGD": robust.aggregator_mixing(robust.mean),
        "CWTM": robust.aggregator_mixing(functools.partial(robust.trimmed_mean, f=f)),
        "GM": robust.aggregator_mixing(robust.geometric_median),
    }[method]


def _attack(name: str, cfg: dict[str, Any], mix, f: int):
    """The model-level attack on honest updates (None for data-level / no attack)."""
    if name in ("none", "label_flip"):
        return None
    if name == "sign_flip":
        return robust.attacks.sign_flip
    base = {"alie": robust.attacks.alie, "foe": robust.attacks.foe}[name]
    if not cfg["line_search"]:
        tau = cfg["alie_tau"] if name == "alie" else cfg["foe_tau"]
        return lambda h: base(h, tau)
    # honest rows come first in the line search's stack: node 0 is honest
    return lambda h: robust.attacks.line_search(base, lambda x: mix(x, 0), h, f, LS_GRID)[0]


def _simulate(cfg, data, method: str, attack: str, *, n: int, byz: tuple[int, ...], steps: int, key):
    X, Y, table, counts, Xh, Yh, Xt, Yt, honest = data
    f = cfg["f"]
    mix = _mix(method, f)
    tx = robust.monna(
        cfg["learning_rate"], f=f, beta=cfg["beta"], mix=mix, byzantine=byz, attack=_attack(attack, cfg, mix, f)
    )
    bs = cfg["batch_size"]
    flip = np.zeros(n, bool)
    if attack == "label_flip":
        flip[list(byz)] = True
    flip = jnp.asarray(flip)

    def worker(params, opt_state, k, rows, cnt, flipped):
        idx = rows[jax.random.randint(k, (bs,), 0, cnt)]
        xb, yb = X[idx], Y[idx]
        yb = jnp.where(flipped, robust.attacks.label_flip(yb, 10), yb)
        loss, g = jax.value_and_grad(_loss)(params, xb, yb)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    program = make_program(worker, n_workers=n, backend="vmap", in_axes=(0, 0, 0, 0, 0, 0))
    params = {"w": jnp.zeros((n, X.shape[1], 10)), "b": jnp.zeros((n, 10))}
    opt_state = jax.vmap(tx.init)(params)
    h_idx = jnp.asarray(honest)

    def step_fn(c):
        p, s, k, t = c
        k, sub = jax.random.split(k)
        p, s, loss = program(p, s, jax.random.split(sub, n), table, counts, flip)
        return (p, s, k, t + 1), {"loss": jnp.mean(loss[h_idx])}

    def eval_fn(c):
        ph = jax.tree.map(lambda a: a[h_idx], c[0])
        loss = jax.vmap(lambda p: _loss(p, Xh, Yh))(ph)
        acc = jax.vmap(lambda p: jnp.mean(jnp.argmax(Xt @ p["w"] + p["b"], -1) == Yt))(ph)
        return {"honest_loss": jnp.mean(loss), "test_acc": jnp.mean(acc), "worst_loss": jnp.max(loss)}

    res = run_loop(step_fn, (params, opt_state, key, jnp.int32(0)), steps=steps, eval_fn=eval_fn,
                   eval_every=cfg["eval_every"])
    return res


def _data(cfg, alpha: float):
    ds = mnist5k()
    train, test = train_test_split(ds, 0.2, seed=cfg["seed"])
    n, f = cfg["n"], cfg["f"]
    parts = dirichlet(np.asarray(train.y), n, alpha, seed=cfg["seed"], min_size=cfg["batch_size"] // 4)
    m = max(len(p) for p in parts)
    table = np.stack([np.resize(p, m) for p in parts]).astype(np.int32)
    counts = np.array([len(p) for p in parts], np.int32)
    honest = np.arange(n - f)
    hidx = np.concatenate([parts[i] for i in honest])
    X, Y = jnp.asarray(_pool(train.x, cfg["downsample"])), jnp.asarray(train.y)
    return (X, Y, jnp.asarray(table), jnp.asarray(counts), X[hidx], Y[hidx],
            jnp.asarray(_pool(test.x, cfg["downsample"])), jnp.asarray(test.y), honest)


def _pool(x: np.ndarray, k: int) -> np.ndarray:
    """k x k average pooling of flattened 28x28 images."""
    if k == 1:
        return np.asarray(x, np.float32)
    s = 28 // k
    return np.asarray(x, np.float32).reshape(-1, s, k, s, k).mean((2, 4)).reshape(-1, s * s)


def run(config: dict[str, Any], ctx: RunContext) -> list[Claim]:
    cfg = config
    n, f, steps = cfg["n"], cfg["f"], cfg["steps"]
    if 2 * f >= n:
        raise ValueError(f"need 2f < n, got n={n}, f={f}")
    byz = tuple(range(n - f, n))
    key = jax.random.PRNGKey(cfg["seed"])
    claims: list[Claim] = []

    # NNA with f = 0 is the mean (PAPERS.md C1 check), on random vectors
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 50))
    err0 = max(float(jnp.max(jnp.abs(robust.nna(x, 0, i) - jnp.mean(x, 0)))) for i in range(n))
    claims.append(Claim.at_most("nna-f0-is-mean", "NNA with f = 0 returns the mean at every node", err0, 1e-5,
                                note=f"max abs difference over {n} nodes, 50-dim Gaussian vectors"))

    results: dict[str, dict[str, dict[str, Any]]] = {}
    jobs = [(a, atk, m) for a in cfg["alphas"] for atk in cfg["attacks"] for m in cfg["methods"]]
    bar = ctx.progress(total=len(jobs) + len(cfg["alphas"]), desc="runs")
    for alpha in cfg["alphas"]:
        data = _data(cfg, alpha)
        # attack-free reference: D-SGD among the honest nodes only
        h = n - f
        hdata = data[:2] + (data[2][:h], data[3][:h]) + data[4:]
        ref = _simulate(cfg, hdata, "D-SGD", "none", n=h, byz=(), steps=steps, key=key)
        bar.update(1)
        tag = f"alpha={alpha:g}"
        results[tag] = {"reference": _summ(ref)}
        _log_evals(ctx, f"{tag}/reference", ref)
        for atk in cfg["attacks"]:
            results[tag][atk] = {}
            for m in cfg["methods"]:
                res = _simulate(cfg, data, m, atk, n=n, byz=byz if atk != "none" else (), steps=steps, key=key)
                results[tag][atk][m] = _summ(res)
                _log_evals(ctx, f"{tag}/{atk}/{m}", res)
                bar.update(1)
    bar.close()
    ctx.log("summary", results=results)
    _plot(ctx, results, cfg)

    r = cfg["ratio"]
    for tag, by_attack in results.items():
        ref_loss = by_attack["reference"]["final_loss"]
        for atk in cfg["attacks"]:
            if atk == "none":
                continue
            row = by_attack[atk]
            if "MoNNA" in row:
                claims.append(Claim.at_most(
                    f"monna-{atk}-{tag}",
                    f"{tag}, {atk}: MoNNA's final honest loss is <= {r}x the attack-free D-SGD loss",
                    row["MoNNA"]["final_loss"] / ref_loss, r,
                    note=f"MoNNA {row['MoNNA']['final_loss']:.4f} vs reference {ref_loss:.4f}; "
                         f"test acc {row['MoNNA']['final_acc']:.3f} vs {by_attack['reference']['final_acc']:.3f}"))
            if "D-SGD" in row:
                v = row["D-SGD"]["final_loss"]
                claims.append(Claim.holds(
                    f"averaging-fails-{atk}-{tag}",
                    f"{tag}, {atk}: plain averaging (D-SGD) fails, i.e. its honest loss exceeds {r}x the reference",
                    {"ratio": v / ref_loss if np.isfinite(v) else "non-finite", "acc": row["D-SGD"]["final_acc"]},
                    f"> {r}", (not np.isfinite(v)) or v / ref_loss > r))
        claims.append(Claim.finding(
            f"final-honest-loss-{tag}",
            f"{tag}: final honest loss / test accuracy of every method under every attack",
            {atk: {m: [round(v["final_loss"], 4), round(v["final_acc"], 4)] for m, v in row.items()}
             for atk, row in by_attack.items() if atk != "reference"}))
    return claims


def _log_evals(ctx, series, res) -> None:
    for j, s in enumerate(res.eval_steps):
        ctx.log(series, step=int(s), **{k: np.asarray(v)[j] for k, v in res.evals.items()})


def _summ(res) -> dict[str, Any]:
    loss = np.asarray(res.evals["honest_loss"], np.float64)
    acc = np.asarray(res.evals["test_acc"], np.float64)
    return {"final_loss": float(loss[-1]) if np.isfinite(loss[-1]) else float("inf"), "final_acc": float(acc[-1]),
            "steps": res.eval_steps.tolist(), "loss": np.nan_to_num(loss, nan=np.inf).tolist(), "acc": acc.tolist()}


def _plot(ctx, results, cfg) -> None:
    import matplotlib.pyplot as plt

    colors = {"MoNNA": "tab:red", "D-SGD": "tab:blue", "CWTM": "tab:green", "GM": "tab:purple"}
    for tag, by_attack in results.items():
        attacks = [a for a in cfg["attacks"]]
        fig, axes = plt.subplots(2, len(attacks), figsize=(3.4 * len(attacks), 6.2), squeeze=False)
        ref = by_attack["reference"]
        for j, atk in enumerate(attacks):
            for m, v in by_attack[atk].items():
                loss = np.minimum(np.asarray(v["loss"]), 10.0)
                axes[0, j].plot(v["steps"], loss, color=colors.get(m), label=m, lw=1.3)
                axes[1, j].plot(v["steps"], v["acc"], color=colors.get(m), label=m, lw=1.3)
            axes[0, j].plot(ref["steps"], ref["loss"], "k--", lw=1, label="attack-free D-SGD (honest only)")
            axes[1, j].plot(ref["steps"], ref["acc"], "k--", lw=1)
            axes[0, j].set_title(atk)
            axes[0, j].set_yscale("log")
            axes[0, j].set_ylim(0.2, 10.5)
            axes[1, j].set_ylim(0, 1)
            axes[1, j].set_xlabel("step")
        axes[0, 0].set_ylabel("honest training loss (clipped at 10)")
        axes[1, 0].set_ylabel("honest test accuracy")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"n={cfg['n']}, f={cfg['f']}, {tag}, MNIST-5k logistic regression, beta={cfg['beta']}")
        fig.tight_layout()
        ctx.savefig(fig, f"honest_curves_{tag.replace('=', '')}.png", dpi=90)
