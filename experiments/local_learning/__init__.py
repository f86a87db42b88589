"""Layer-local learning vs backprop: tpSGD/DRTP, InfoPro, feature reconstruction, AugLocal, MAN (docs/papers/local-learning.md).

Papers: "Learning with Local Gradients at the Edge" (tpSGD, 2022); Frenkel et al. 2021
(DRTP); Wang et al. 2021 (InfoPro); Pathak et al. 2023 ("Local Learning on Transformers
via Feature Reconstruction"); Ma et al. 2024 (AugLocal, ICLR); Su et al. 2024 (MAN).
Command: ``lgrad run local-learning --quick`` (``--full``: both datasets, the CNN on
MNIST-5k too, wider models, 5 seeds).
Expected: every block's update depends only on its own local loss (cross-block gradients
exactly 0); tpSGD within 5 points of backprop on the shallow MLP / CNN / RNN and DRTP on
the MLP / CNN; the auxiliary-network rules within 3 points (every gap a mean over seeds,
paired by seed, on the same model); XLA's compiled memory of each rule reported as a
ratio to backprop on the same model and batch, tpSGD's below 1 and its temporary memory
constant in depth (one block at a time).

Each rule in its paper's setting (issue "fidelity"): DRTP on **tanh** units (Frenkel et
al.'s networks; compared with backprop on the same tanh model), tpSGD with the
**cross-entropy of the fixed projected head** (one of the losses the paper allows; on the
RNN the same target at every time step), the auxiliary-net rules on the ReLU models;
**80 epochs** on digits (MLP and RNN flat over the last 10 epochs; the CNN still rising),
**3 seeds** (each its own initialisation, projections and batch order; the papers report
single runs or means of a few), all seeds of a (model, rule) trained in one vmapped
program. Quick uses the 8x8 digits only (the same claims on smaller data); full adds
MNIST-5k. The quick run costs ~628 s of CPU time, over the 4-minute budget: the remedy
is one experiment per paper (not done yet). An 8-channel CNN tried to save time widened
every CNN gap (tpSGD 16.3 points) and is not used.

Before -> after (quick; docs/papers/local-learning.md has the full table): DRTP on ReLU
20.6/24.2 (MLP/CNN, digits, 1 seed, 24 epochs, fail) -> tanh, 3 seeds, 80 epochs; tpSGD
with the l2 loss to N(0,1) targets (RNN 26.5 digits / 61.2 MNIST-5k, CNN 18.9: fail) ->
the CE-projected loss; every gap one seed -> the mean over 3 seeds with the per-seed
values; MNIST-5k (8 epochs) moved to full. The thresholds (``THRESHOLDS``) are unchanged.

Measured (quick, mean gap over 3 seeds, points): tpSGD MLP 0.00, CNN 6.50 (fail), RNN
4.18 (pass; 61.2 before); DRTP tanh MLP 1.02, CNN 15.04 (fail); InfoPro / feature
reconstruction MLP 0.09 / 0.37, CNN 1.02 / 1.67; AugLocal 0.19 / 0.00, MAN 0.00 / 0.00
(pass); isolation exact; interleaved step vs sum form 1.19e-6 > 1e-6 (fail: float32
rounding, 4.8e-7 before); tpSGD peak memory 0.89 (MLP) / 0.87 (CNN) of backprop,
temporaries constant in depth.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lgrad.bench import compiled_memory
from lgrad.data import digits, mnist5k, train_test_split
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Choice, Float, Int
from lgrad.local import LocalLearner
from lgrad.local import models as M

NAME = "local-learning"
PAPER = (
    "tpSGD (Learning with Local Gradients at the Edge, 2022); DRTP (Frenkel et al. 2021); InfoPro (Wang et al. 2021); "
    "Local Learning on Transformers via Feature Reconstruction (2023); AugLocal (Ma et al. 2024); MAN (Su et al. 2024)"
)
DESCRIPTION = "Layer-local rules vs backprop on digits/MNIST-5k (MLP, CNN, RNN), 3 seeds: accuracy, gradient isolation, memory."
EXPECTED = ("tpSGD and DRTP within 5 points of backprop, auxiliary-net rules within 3 (means over seeds); cross-block grads "
            "exactly 0; tpSGD memory below backprop.")
# The claims' thresholds: accuracy gaps in points (applied to the mean over seeds), memory ratios, float tolerance.
THRESHOLDS = {"tpsgd": 5.0, "drtp": 5.0, "aux": 3.0, "grad-match": 1e-6, "depth-temp-ratio": 1.05, "peak-ratio": 1.0}

AUX_RULES = ["infopro", "feature_reconstruction", "auglocal", "man"]
ALL_RULES = ["backprop", "drtp", "tpsgd"] + AUX_RULES

_COMMON = dict(
    seed=0,
    seeds=3,
    models=["mlp", "cnn", "rnn"],
    rules=ALL_RULES,
    batch_size=64,
    learning_rate=1e-3,
    mlp_width=256,
    mlp_hidden=2,
    act="relu",
    drtp_act="tanh",
    tpsgd_loss="ce",
    man_momentum=0.999,
    auglocal_depth=3,
    mem_batch=1024,
    test_fraction=0.2,
)
CONFIGS = {
    "quick": dict(_COMMON, datasets=["digits"], cnn_datasets=["digits"], epochs=30, digits_epochs=80,
                  cnn_channels=16, cnn_convs=2, rnn_hidden=64, mem_depths=[2, 4, 8]),
    "full": dict(_COMMON, seeds=5, datasets=["digits", "mnist5k"], cnn_datasets=["digits", "mnist5k"], epochs=40,
                 digits_epochs=100, cnn_channels=32, cnn_convs=3, rnn_hidden=128, mem_depths=[2, 4, 8, 16]),
}
SMOKE = dict(
    seeds=2, datasets=["digits"], models=["mlp"], rules=["backprop", "tpsgd", "drtp"], cnn_datasets=[], epochs=1,
    digits_epochs=1, mlp_width=32, mem_batch=64, mem_depths=[2, 3],
)
# What `lgrad run --set` / `lgrad sweep` accept (lgrad.engine.config; refused before any compute).
LIMITS = {
    "seeds": Int(min=1),
    "datasets": Choice("digits", "mnist5k"),
    "cnn_datasets": Choice("digits", "mnist5k"),
    "models": Choice("mlp", "cnn", "rnn"),
    "rules": Choice(*ALL_RULES),
    "digits_epochs": Int(min=1),
    "mlp_width": Int(min=1),
    "mlp_hidden": Int(min=1),
    "cnn_channels": Int(min=1),
    "cnn_convs": Int(min=1),
    "rnn_hidden": Int(min=1),
    "act": Choice(*M.ACTIVATIONS),
    "drtp_act": Choice(*M.ACTIVATIONS),
    "tpsgd_loss": Choice("l2", "l1", "ce"),
    "man_momentum": Float(min=0, lt=1),
    "auglocal_depth": Int(min=1),
    "mem_batch": Int(min=1),
    "mem_depths": Int(min=2),
    "test_fraction": Float(gt=0, lt=1),
}


def memory_estimate(cfg: dict[str, Any]) -> int:
    """Bytes (float32, a rough lower bound): the MNIST-5k arrays, the widest model's
    parameters with Adam state (x4) for every seed, and the activations of the memory
    probe (``mem_batch`` rows through the deepest ``mem_depths`` model, CNN maps included)."""
    pixels, classes = 28 * 28, 10
    w, h = cfg["mlp_width"], cfg["mlp_hidden"]
    mlp = pixels * w + (h - 1) * w * w + w * classes
    rnn = 28 * cfg["rnn_hidden"] + cfg["rnn_hidden"] ** 2
    params = 4 * 4 * cfg["seeds"] * max(mlp, rnn, 9 * cfg["cnn_channels"] ** 2 * cfg["cnn_convs"])
    depth = max(cfg["mem_depths"], default=h)
    acts = 4 * cfg["mem_batch"] * max(depth * w, cfg["cnn_convs"] * cfg["cnn_channels"] * pixels if "cnn" in cfg["models"] else 0)
    probe = 4 * 4 * (pixels * w + depth * w * w)
    return 4 * 5000 * pixels + params + acts + probe + 4 * cfg["seeds"] * cfg["batch_size"] * pixels

# which rules run on which model (the RNN is tpSGD's extension; the others are not defined for it here)
MODEL_RULES = {"mlp": ALL_RULES, "cnn": ALL_RULES, "rnn": ["backprop", "tpsgd"]}


def _act(rule: str, kind: str, cfg: dict) -> str:
    """The activation of ``rule``'s model: DRTP's paper uses tanh units; the RNN is tanh."""
    if kind == "rnn":
        return "tanh"
    return cfg["drtp_act"] if rule == "drtp" else cfg["act"]


def _data(name: str, seed: int, test_fraction: float):
    ds = digits() if name == "digits" else mnist5k()
    tr, te = train_test_split(ds, test_fraction, seed=seed)
    side = int(round(np.sqrt(ds.x.shape[1])))
    return tr, te, side, ds.num_classes


def _model(kind: str, side: int, C: int, cfg: dict, rule: str, seed: int, act: str):
    rngs = nnx.Rngs(seed)
    if kind == "mlp":
        return M.mlp(side * side, (cfg["mlp_width"],) * cfg["mlp_hidden"], C, rngs=rngs, act=act), (side * side,)
    if kind == "cnn":
        return M.cnn((side, side), cfg["cnn_channels"], C, n_conv=cfg["cnn_convs"], rngs=rngs, act=act), (side, side, 1)
    if kind == "rnn":  # rows as time steps; tpSGD's RNN is local in time as well (truncated recurrence)
        return M.rnn(side, cfg["rnn_hidden"], C, truncate=(rule != "backprop"), rngs=rngs), (side, side)
    raise ValueError(f"unknown model {kind!r}")


def _options(rule: str, cfg: dict) -> dict:
    if rule == "tpsgd":
        return {"loss": cfg["tpsgd_loss"]}
    if rule == "man":
        return {"momentum": cfg["man_momentum"]}
    if rule == "auglocal":
        return {"depth": cfg["auglocal_depth"]}
    return {}


def _learner(kind, side, C, cfg, rule, seed, act):
    blocks, in_shape = _model(kind, side, C, cfg, rule, seed, act)
    return LocalLearner(blocks, rule, input_shape=in_shape, num_classes=C, key=jax.random.PRNGKey(seed + 1),
                        rule_options=_options(rule, cfg))


def _train_seeds(kind, act, rule, cfg, data, epochs, progress=None) -> tuple[np.ndarray, LocalLearner]:
    """All seeds of one (model, rule) in one vmapped program: each seed its own initialisation,
    projections / auxiliary nets and epoch-wise batch order. Returns test accuracy (epochs + 1, seeds)."""
    tr, te, side, C = data
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    learners = [_learner(kind, side, C, cfg, rule, s, act) for s in seeds]
    L, shape, tx = learners[0], learners[0].spec.input_shape, optax.adam(cfg["learning_rate"])
    states = [lr.init_train_state(tx, jax.random.PRNGKey(s)) for lr, s in zip(learners, seeds)]
    carry = (jax.tree.map(lambda *a: jnp.stack(a), *states), jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
    xtr, ytr = jnp.asarray(tr.x.reshape((-1,) + shape)), jnp.asarray(tr.y)
    xte, yte = jnp.asarray(te.x.reshape((-1,) + shape)), jnp.asarray(te.y)
    n, bs = xtr.shape[0], cfg["batch_size"]
    spe = n // bs

    def one(state, dkey):
        def batch_fn(step, key):  # epoch-wise shuffling: a permutation per epoch, batch = its slice
            perm = jax.random.permutation(jax.random.fold_in(dkey, step // spe), n)
            idx = jax.lax.dynamic_slice_in_dim(perm, (step % spe) * bs, bs)
            return xtr[idx], ytr[idx]

        return L.train_step(tx, batch_fn)(state)

    def step(c):
        new, metrics = jax.vmap(one)(*c)
        return (new, c[1]), metrics

    def eval_fn(c):
        acc = jax.vmap(lambda p: 100.0 * jnp.mean(jnp.argmax(L.forward(p, xte), -1) == yte))(c[0].params)
        return {"test_acc": acc}

    res = run_loop(step, carry, steps=spe * epochs, eval_fn=eval_fn, eval_every=spe, chunk_size=spe * epochs,
                   progress=progress)
    return np.asarray(res.evals["test_acc"]), learners[0]


def _isolation(learner: LocalLearner, x, y) -> tuple[float, float]:
    """max |dJ_k/dtheta_j| over j != k (must be exactly 0), and max |grads - grad(sum J)|."""
    params, state = learner.init_params(), learner.init_state()
    jac = jax.jacrev(lambda p: learner.local_losses(p, state, x, y))(params)
    K = len(learner.blocks)
    cross = 0.0
    for j in range(K):
        for leaf in jax.tree.leaves(jac["blocks"][j]) + jax.tree.leaves(jac["aux"][j]):
            rows = np.abs(np.asarray(leaf)).reshape(K, -1).max(axis=1)
            cross = max(cross, float(np.delete(rows, j).max(initial=0.0)))
    g, _ = jax.jit(learner.grads)(params, state, x, y)
    g2 = jax.grad(lambda p: learner.local_losses(p, state, x, y).sum())(params)
    diff = max((float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2))), default=0.0)
    return cross, diff


def _jobs(cfg) -> list[tuple[str, str, str, str]]:
    """(dataset, model, activation, rule), with a backprop baseline for every activation in use."""
    jobs = []
    for ds in cfg["datasets"]:
        for kind in cfg["models"]:
            if kind == "cnn" and ds not in cfg["cnn_datasets"]:
                continue
            rules = [r for r in cfg["rules"] if r in MODEL_RULES[kind] and r != "backprop"]
            for act in dict.fromkeys(_act(r, kind, cfg) for r in rules):
                jobs.append((ds, kind, act, "backprop"))
            jobs += [(ds, kind, _act(r, kind, cfg), r) for r in rules]
    return jobs


def _train_all(cfg, ctx) -> dict[str, Any]:
    data = {ds: _data(ds, cfg["seed"], cfg["test_fraction"]) for ds in cfg["datasets"]}
    curves: dict[tuple, np.ndarray] = {}
    isolation: dict[str, float] = {}
    grad_match = 0.0
    t0 = time.perf_counter()
    for ds, kind, act, rule in _jobs(cfg):
        with ctx.variant(f"{ds}/{kind}/{act}/{rule}"):
            epochs = cfg["digits_epochs"] if ds == "digits" else cfg["epochs"]
            acc, learner = _train_seeds(kind, act, rule, cfg, data[ds], epochs, progress=ctx.progress)
        curves[(ds, kind, act, rule)] = acc
        for e, a in enumerate(acc):
            ctx.log(f"{ds}/{kind}/{act}/{rule}", step=e, test_acc_mean=float(a.mean()), test_acc=a)
        if rule != "backprop" and ds == cfg["datasets"][0]:
            tr = data[ds][0]
            shape = learner.spec.input_shape
            cross, diff = _isolation(learner, jnp.asarray(tr.x[:8].reshape((-1,) + shape)), jnp.asarray(tr.y[:8]))
            isolation[f"{kind}/{rule}"] = cross
            grad_match = max(grad_match, diff)
    return dict(curves=curves, isolation=isolation, grad_match=grad_match, train_s=time.perf_counter() - t0)


def _memory_probe(cfg) -> dict[str, Any]:
    """Compiled memory of every rule's gradient step vs backprop's (same model and batch), and
    tpSGD's vs backprop's temporaries over depth."""
    mem: dict[str, dict[str, dict[str, int]]] = {}
    Bm, key, seed = cfg["mem_batch"], jax.random.PRNGKey(cfg["seed"]), cfg["seed"]
    for kind in [k for k in ("mlp", "cnn") if k in cfg["models"]]:
        mem[kind] = {}
        for rule in dict.fromkeys(["backprop"] + [r for r in cfg["rules"] if r in MODEL_RULES[kind]]):
            learner = _learner(kind, 28, 10, cfg, rule, seed, _act(rule, kind, cfg))
            x = jax.random.uniform(key, (Bm,) + learner.spec.input_shape)
            y = jax.random.randint(key, (Bm,), 0, 10)
            mem[kind][rule] = compiled_memory(learner.grads, learner.init_params(), learner.init_state(), x, y)
    ratios = {
        kind: {r: {"peak": m["peak"] / mm["backprop"]["peak"], "temp": m["temp"] / max(mm["backprop"]["temp"], 1)}
               for r, m in mm.items()}
        for kind, mm in mem.items()
    }
    depth_mem: dict[str, dict[int, dict[str, int]]] = {"backprop": {}, "tpsgd": {}}
    for D in cfg["mem_depths"]:
        for rule in depth_mem:
            blocks = M.mlp(784, (cfg["mlp_width"],) * D, 10, rngs=nnx.Rngs(seed))
            learner = LocalLearner(blocks, rule, input_shape=(784,), num_classes=10, rule_options=_options(rule, cfg))
            x = jax.random.uniform(key, (Bm, 784))
            y = jax.random.randint(key, (Bm,), 0, 10)
            depth_mem[rule][D] = compiled_memory(learner.grads, learner.init_params(), learner.init_state(), x, y)
    return dict(mem=mem, ratios=ratios, depth=depth_mem)


def run(cfg: dict[str, Any], ctx: RunContext) -> list[Claim]:
    tr = _train_all(cfg, ctx)
    with ctx.variant("memory"):
        mp = _memory_probe(cfg)
    final = {f"{ds}/{k}/{a}/{r}": acc[-1] for (ds, k, a, r), acc in tr["curves"].items()}
    ctx.log("summary", final_test_acc=final, isolation_max_cross_grad=tr["isolation"], grad_vs_sum_form=tr["grad_match"],
            memory=mp["mem"], memory_ratio=mp["ratios"], depth_memory=mp["depth"], train_seconds=tr["train_s"])
    _plot(ctx, tr["curves"], mp["ratios"], mp["depth"], cfg)
    return _isolation_claims(tr) + _accuracy_claims(cfg, tr["curves"]) + _memory_claims(cfg, mp)


# ---- claims ----------------------------------------------------------------------------
def _isolation_claims(tr) -> list[Claim]:
    if not tr["isolation"]:
        return []
    return [
        Claim.at_most(
            "gradient-isolation-exact",
            "each block's update depends only on its own local loss: d J_k / d theta_j = 0 exactly for j != k (all rules, all models)",
            max(tr["isolation"].values()), 0.0,
            note=f"max |dJ_k/dtheta_j| over j != k from jax.jacrev of the stop-gradient local losses; per rule/model: {tr['isolation']}",
        ),
        Claim.at_most(
            "interleaved-step-equals-sum-form", "the forward-only interleaved step returns exactly grad(sum_k J_k)",
            tr["grad_match"], THRESHOLDS["grad-match"], note="max abs difference over all gradient leaves, float32",
        ),
    ]


def _gaps(curves, rule, kinds) -> dict[str, np.ndarray]:
    """backprop minus ``rule`` final test accuracy per seed (paired), per dataset/model, same activation."""
    out = {}
    for (ds, k, a, r), acc in curves.items():
        if r == rule and k in kinds and (ds, k, a, "backprop") in curves:
            out[f"{ds}/{k}" + (f" ({a})" if k != "rnn" else "")] = curves[(ds, k, a, "backprop")][-1] - acc[-1]
    return out


def _gap_claim(cid, statement, gaps, threshold, cfg, curves, note="") -> Claim:
    means = {k: float(v.mean()) for k, v in gaps.items()}
    worst = max(means, key=means.get)
    measured = {k: {"mean": round(means[k], 2), "std": round(float(v.std()), 2), "per_seed": np.round(v, 2)}
                for k, v in gaps.items()}
    late = {}
    for k in gaps:  # is the model converged? mean accuracy change over the last 10 epochs, all its rules
        d = [c[-1].mean() - c[-11].mean() for (d2, k2, a2, r2), c in curves.items() if f"{d2}/{k2}" == k.split(" ")[0] and len(c) > 11]
        late[k] = round(float(np.mean(d)), 2) if d else None
    return Claim.holds(
        cid, statement, measured, f"mean gap <= {threshold:g} points on every dataset/model", means[worst] <= threshold,
        note=f"backprop minus rule test accuracy (points) after {cfg['digits_epochs']} epochs (digits) / {cfg['epochs']} "
             f"(MNIST-5k), {cfg['seeds']} seeds paired by seed; worst {worst}: {means[worst]:.2f}; mean change over the "
             f"last 10 epochs (all rules of that model): {late}" + (f"; {note}" if note else ""),
    )


def _accuracy_claims(cfg, curves) -> list[Claim]:
    claims, S = [], cfg["seeds"]
    for kind in ("mlp", "cnn", "rnn"):
        g = _gaps(curves, "tpsgd", [kind])
        if g:
            claims.append(_gap_claim(
                f"tpsgd-within-5-{kind}", f"tpSGD ({cfg['tpsgd_loss']} loss) reaches backprop's test accuracy within "
                f"{THRESHOLDS['tpsgd']:g} points on the shallow {kind.upper()} (mean over {S} seeds)", g,
                THRESHOLDS["tpsgd"], cfg, curves,
                note="the RNN's tpSGD recurrence is stop-gradient (local in time), the target the same at every step"
                * (kind == "rnn"),
            ))
    g = _gaps(curves, "drtp", ["mlp", "cnn"])
    if g:
        claims.append(_gap_claim(
            "drtp-within-5", f"DRTP within {THRESHOLDS['drtp']:g} points of backprop on the shallow MLP/CNN with "
            f"{cfg['drtp_act']} units (mean over {S} seeds)", g, THRESHOLDS["drtp"], cfg, curves,
            note="backprop baseline on the same model (same activation)",
        ))
    for rule in AUX_RULES:
        g = _gaps(curves, rule, ["mlp", "cnn"])
        if g:
            claims.append(_gap_claim(
                f"{rule}-within-3", f"{rule} within {THRESHOLDS['aux']:g} points of backprop (mean over {S} seeds)", g,
                THRESHOLDS["aux"], cfg, curves,
            ))
    return claims


def _memory_claims(cfg, mp) -> list[Claim]:
    claims, Bm = [], cfg["mem_batch"]
    for kind, rr in mp["ratios"].items():
        if "tpsgd" in rr:
            claims.append(Claim.holds(
                f"tpsgd-memory-below-backprop-{kind}",
                f"compiled peak memory of the tpSGD step is below backprop's ({kind.upper()}, batch {Bm})",
                {"peak_ratio": rr["tpsgd"]["peak"], "temp_ratio": rr["tpsgd"]["temp"]}, "peak ratio < 1",
                rr["tpsgd"]["peak"] < THRESHOLDS["peak-ratio"],
                note="XLA memory_analysis of the gradient step: peak = arguments + outputs + temporaries - aliased",
            ))
        claims.append(Claim.finding(
            f"memory-ratios-{kind}",
            f"compiled memory of each rule's gradient step / backprop's ({kind.upper()}, batch {Bm}); the papers report "
            "40-60% savings (InfoPro), ~40% (AugLocal), >45% (MAN) on deep ImageNet nets",
            {r: {"peak": round(v["peak"], 3), "temp": round(v["temp"], 3)} for r, v in rr.items()},
            note="shallow nets: the auxiliary heads can cost more than the activations they save; DRTP's model is "
                 f"{cfg['drtp_act']}, the others {cfg['act']} (the activation does not change the memory layout)",
        ))
    dm = mp["depth"]
    ds_ = sorted(dm["tpsgd"])
    t_lo, t_hi = dm["tpsgd"][ds_[0]]["temp"], dm["tpsgd"][ds_[-1]]["temp"]
    b_lo, b_hi = dm["backprop"][ds_[0]]["temp"], dm["backprop"][ds_[-1]]["temp"]
    claims.append(Claim.at_most(
        "tpsgd-forward-only-one-block",
        f"the forward-only tpSGD step holds one block's activations at a time: its temporary memory does not grow "
        f"with depth (ratio of temp bytes at depth {ds_[-1]} vs {ds_[0]})",
        t_hi / t_lo, THRESHOLDS["depth-temp-ratio"],
        note=f"tpSGD temp {t_lo} -> {t_hi} bytes; backprop temp {b_lo} -> {b_hi} bytes (MLP width {cfg['mlp_width']}, batch {Bm})",
    ))
    return claims


# ---- plot --------------------------------------------------------------------------------
def _plot(ctx: RunContext, curves, ratios, depth_mem, cfg) -> None:
    import matplotlib.pyplot as plt

    panels = sorted({(ds, k, a) for ds, k, a, _ in curves})
    colors = {r: c for r, c in zip(ALL_RULES, plt.rcParams["axes.prop_cycle"].by_key()["color"])}
    ncol = min(3, max(len(panels), 2))
    nrow = (len(panels) + ncol - 1) // ncol + 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), squeeze=False)
    lo = max(0, min(float(a[-1].min()) for a in curves.values()) - 10)
    for ax, (ds, k, a) in zip(axes.ravel(), panels):
        for (d2, k2, a2, r), acc in curves.items():
            if (d2, k2, a2) != (ds, k, a):
                continue
            m = acc.mean(axis=1)
            xs = np.arange(len(m))
            ax.plot(xs, m, label=f"{r} ({m[-1]:.1f})", color=colors.get(r), lw=1.5, ls="--" if r == "backprop" else "-")
            ax.fill_between(xs, acc.min(axis=1), acc.max(axis=1), color=colors.get(r), alpha=0.15, lw=0)
        ax.set_title(f"{ds} / {k.upper()} ({a})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test accuracy (%), mean of {cfg['seeds']} seeds")
        ax.set_ylim(lo, 100)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    mem_axes = axes[-1]
    for ax, (kind, rr) in zip(mem_axes, ratios.items()):
        names = list(rr)
        xs = np.arange(len(names))
        ax.axis("on")
        ax.bar(xs - 0.2, [rr[n]["peak"] for n in names], 0.4, label="peak")
        ax.bar(xs + 0.2, [rr[n]["temp"] for n in names], 0.4, label="temporaries")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xticks(xs, [n.replace("feature_reconstruction", "feat-rec") for n in names], rotation=35, fontsize=7)
        ax.set_ylabel("bytes / backprop's")
        ax.set_title(f"compiled memory, {kind.upper()} (batch {cfg['mem_batch']})")
        ax.legend(fontsize=7)
    if len(ratios) < ncol:
        ax = mem_axes[len(ratios)]
        ax.axis("on")
        for rule, mm in depth_mem.items():
            ds_ = sorted(mm)
            ax.plot(ds_, [mm[d]["temp"] / 2**20 for d in ds_], "o-", label=rule)
        ax.set_xlabel("MLP depth (hidden blocks)")
        ax.set_ylabel("temporary MiB")
        ax.set_title("temporaries vs depth")
        ax.legend(fontsize=7)
    fig.suptitle("Layer-local learning vs backprop (band: min-max over seeds)")
    fig.tight_layout()
    ctx.savefig(fig, "local_learning.png", dpi=90)
