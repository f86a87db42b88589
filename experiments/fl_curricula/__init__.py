"""Curricula in federated learning: does ordering each client's data by difficulty
help more as the clients' data grow more heterogeneous?

Paper: S. Vahidian, S. Kadaveru, W. Baek, W. Wang, V. Kungurtsev, C. Chen, M. Shah,
B. Lin, "When Do Curricula Work in Federated Learning?", ICCV 2023. The project's
account: ``docs/papers/fl-curricula.md``.

Setup: scikit-learn digits (1,437 train / 360 test), 10 clients with Dirichlet
label skew alpha in {0.05, 0.2, 1, 100}. An expert (the same MLP, trained centrally
on all training data with Adam) scores every training example by its loss. Each
client orders its rows by score -- curriculum (easy first), anti-curriculum (hard
first) or random -- and FedAvg clients (``lgrad.federated._curriculum.
curriculum_training`` in ``lgrad.federated.server_algorithm``; K local SGD steps)
draw their minibatches from the first ceil(g(t) n_i) rows with the linear pacing
g(t) = min(1, b + (1 - b) t / (a T)), b = ``pace_start``, a = ``pace_full_at``
(the paper's values are unverified; 0.2 / 0.8 are ours). The same seeds (partition,
init, minibatch keys) serve every ordering. Every (alpha, seed) setting of one
ordering runs at once (``vmap``) inside ``lgrad.train.run_loop``. Optionally
(``client_selection``), curriculum ordering plus client selection by difficulty
(``difficulty_selection``: only the easiest ceil(g(t) n) clients by mean score are
averaged) is reported as a finding.

Command: ``lgrad run fl-curricula --quick``.
Expected (the paper): curricula help more as non-IIDness grows: the accuracy gap
(curriculum - random, seed mean) at alpha = 0.05 exceeds the gap at alpha = 100.

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
from lgrad.data import digits, train_test_split
from lgrad.distributed.partition import dirichlet
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Bool, Float, Int
from lgrad.federated._curriculum import ORDERINGS, curriculum_training, difficulty_selection, linear_pacing, order_by_difficulty

NAME = "fl-curricula"
PAPER = "Vahidian et al. 2023, When Do Curricula Work in Federated Learning? (ICCV)"
DESCRIPTION = "Curriculum / anti-curriculum / random ordering of client data with linear pacing, digits, Dirichlet alpha 0.05-100."
EXPECTED = "accuracy gap (curriculum - random) at Dirichlet alpha = 0.05 exceeds the gap at alpha = 100."
CRITERIA = {
    "gap_difference": 0.0,  # gap(alpha_min) - gap(alpha_max), seed means (strictly greater)
}

_COMMON = dict(
    seed=0, n_clients=10, dirichlet_alphas=[0.05, 0.2, 1.0, 100.0], hidden=32, learning_rate=0.1, local_steps=10,
    batch_size=16, pace_start=0.2, pace_full_at=0.8, expert_steps=1000, expert_lr=3e-3, client_selection=True,
)
CONFIGS = {
    "quick": dict(_COMMON, rounds=30, n_seeds=5),
    "full": dict(_COMMON, rounds=100, n_seeds=10),
}
SMOKE = dict(rounds=2, n_seeds=1, dirichlet_alphas=[0.2, 100.0], expert_steps=5, local_steps=2, client_selection=False)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "n_clients": Int(min=2, max=100),
    "dirichlet_alphas": Float(gt=0),
    "hidden": Int(min=1, max=4096),
    "learning_rate": Float(gt=0),
    "local_steps": Int(min=1, max=10**4),
    "batch_size": Int(min=1, max=1024),
    "pace_start": Float(gt=0, max=1),
    "pace_full_at": Float(gt=0, max=1),
    "expert_steps": Int(min=0, max=10**6),
    "expert_lr": Float(gt=0),
    "client_selection": Bool(),
    "rounds": Int(min=1, max=10**5),
    "n_seeds": Int(min=1, max=100),
}


# ----------------------------------------------------------------------------- model, expert
def _init(key, d_in, hidden):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in), "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), "b2": jnp.zeros(10)}


def _logits(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _loss(p, batch):
    return optax.softmax_cross_entropy_with_integer_labels(_logits(p, batch[0]), batch[1]).mean()


def _expert_scores(cfg, x, y) -> tuple[np.ndarray, float]:
    """Per-example loss of an expert trained centrally (full batch Adam) on all training data."""
    tx = optax.adam(cfg["expert_lr"])
    p0 = _init(jax.random.PRNGKey(cfg["seed"] + 999), x.shape[1], cfg["hidden"])

    def step(carry):
        p, s = carry
        loss, g = jax.value_and_grad(_loss)(p, (x, y))
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), {"loss": loss}

    res = run_loop(step, (p0, tx.init(p0)), steps=cfg["expert_steps"])
    p = res.state[0]
    per_ex = optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y)
    acc = float(jnp.mean(jnp.argmax(_logits(p, x), -1) == y))
    return np.asarray(per_ex, np.float64), acc


# ----------------------------------------------------------------------------- federated runs
def _settings(cfg, y):
    """Every (alpha, seed): the clients' row indices (unordered) and the seed."""
    out = []
    for a in cfg["dirichlet_alphas"]:
        for s in range(cfg["n_seeds"]):
            seed = cfg["seed"] + s
            out.append((a, seed, dirichlet(y, cfg["n_clients"], a, seed=seed, min_size=2)))
    return out


def _stack(settings, scores, ordering, x, y) -> federated.ClientData:
    """Each client's rows in ``ordering``, padded (own rows repeated after the real ones) to one size M."""
    ordered = [order_by_difficulty(parts, scores, ordering, seed=seed) for _, seed, parts in settings]
    m = max(len(p) for ps in ordered for p in ps)
    rows = np.stack([np.stack([np.resize(p, m) for p in ps]) for ps in ordered])
    counts = np.array([[len(p) for p in ps] for ps in ordered], np.int32)
    return federated.ClientData((jnp.asarray(x[rows]), jnp.asarray(y[rows])), jnp.asarray(counts))


def _client_difficulty(settings, scores) -> np.ndarray:
    """(settings, n): each client's mean example score."""
    return np.array([[scores[p].mean() for p in parts] for _, _, parts in settings])


def _run_ordering(cfg, data: federated.ClientData, test_xy, selection: np.ndarray | None, progress=None):
    """Test accuracy per round (rounds + 1, settings) for one ordering, all settings at once
    (``selection``: (settings, n) client scores for client selection by difficulty, else None)."""
    pace = linear_pacing(rounds=cfg["rounds"], start=cfg["pace_start"], full_at=cfg["pace_full_at"])
    client = curriculum_training(optax.sgd(cfg["learning_rate"]), _loss, local_steps=cfg["local_steps"],
                                 batch_size=cfg["batch_size"], pacing=pace)

    def alg_for(client_scores):  # the scores may be traced: one algorithm per vmapped setting
        agg = None if selection is None else difficulty_selection(client_scores, pace)
        return federated.server_algorithm(client, n_clients=cfg["n_clients"], aggregator=agg, weighted=False)

    n_set = data.count.shape[0]
    scores = jnp.asarray(np.zeros(data.count.shape) if selection is None else selection, jnp.float32)
    keys = jnp.stack([jax.random.PRNGKey(cfg["seed"] + 10 * j) for j in range(n_set)])
    init_keys = jnp.stack([jax.random.PRNGKey(cfg["seed"] + 1000 + j % cfg["n_seeds"]) for j in range(n_set)])
    states = jax.vmap(lambda k, sc: alg_for(sc).init(None, _init(k, test_xy[0].shape[1], cfg["hidden"])))(init_keys, scores)
    acc_fn = jax.vmap(lambda p: jnp.mean(jnp.argmax(_logits(p, test_xy[0]), -1) == test_xy[1]))
    rnd = jax.vmap(lambda st, arr, cnt, k, sc: alg_for(sc).round(st, federated.ClientData(arr, cnt), k)[0])

    def step(carry):
        states, keys, arrays, counts = carry
        keys, sub = jax.vmap(jax.random.split, out_axes=1)(keys)
        states = rnd(states, arrays, counts, sub, scores)
        return (states, keys, arrays, counts), {"acc": acc_fn(states.params)}

    res = run_loop(step, (states, keys, data.arrays, data.count), steps=cfg["rounds"], progress=progress)
    return np.concatenate([np.asarray(acc_fn(states.params))[None], np.asarray(res.history["acc"])], 0)


# ----------------------------------------------------------------------------- run, claims
def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """``final``: test accuracy after the last round per ordering, (alphas, seeds) (float32);
    ``expert_acc``: the scoring expert's train accuracy."""
    cfg = dict(config)
    train, test = train_test_split(digits(), 0.2, seed=cfg["seed"])
    x, y = np.asarray(train.x, np.float32), np.asarray(train.y, np.int32)
    test_xy = (jnp.asarray(test.x, jnp.float32), jnp.asarray(np.asarray(test.y, np.int32)))
    scores, expert_acc = _expert_scores(cfg, jnp.asarray(x), jnp.asarray(y))
    settings = _settings(cfg, y)
    curves = {}
    for ordering in ORDERINGS:
        with ctx.variant(ordering):
            curves[ordering] = _run_ordering(cfg, _stack(settings, scores, ordering, x, y), test_xy, None, ctx.progress)
    if cfg["client_selection"]:
        with ctx.variant("curriculum + selection"):
            curves["curriculum + selection"] = _run_ordering(
                cfg, _stack(settings, scores, "curriculum", x, y), test_xy, _client_difficulty(settings, scores),
                ctx.progress)
    n_a, n_s = len(cfg["dirichlet_alphas"]), cfg["n_seeds"]
    final = {k: c[-1].reshape(n_a, n_s) for k, c in curves.items()}
    for k, c in curves.items():
        for j, (a, s, _) in enumerate(settings):
            ctx.log_history(f"{k}/alpha={a:g}/seed={s}", {"test_acc": c[:, j]}, every=5)
    ctx.log("summary", expert_train_acc=expert_acc, final={k: v.tolist() for k, v in final.items()})
    _plot(ctx, cfg, final)
    return {"final": {k: v.tolist() for k, v in final.items()}, "expert_acc": expert_acc}


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The claims from the final accuracies and ``CRITERIA``."""
    cfg, expert_acc = config, measurements["expert_acc"]
    final = {k: np.asarray(v, np.float32) for k, v in measurements["final"].items()}  # as measured
    alphas = np.asarray(cfg["dirichlet_alphas"], float)
    lo, hi = int(np.argmin(alphas)), int(np.argmax(alphas))
    gap = final["curriculum"] - final["random"]  # (alphas, seeds)
    anti = final["anti"] - final["random"]
    per_alpha = {f"alpha={a:g}": [round(float(gap[i].mean()), 4), round(float(gap[i].std()), 4)] for i, a in enumerate(alphas)}
    diff = float(gap[lo].mean() - gap[hi].mean())
    se = float(np.sqrt((gap[lo].var() + gap[hi].var()) / cfg["n_seeds"]))
    out = [
        Claim.holds(
            "gap-grows-with-heterogeneity",
            f"accuracy gap curriculum - random (mean of {cfg['n_seeds']} seeds) at alpha = {alphas[lo]:g} exceeds the "
            f"gap at alpha = {alphas[hi]:g} ({cfg['n_clients']} clients, {cfg['rounds']} rounds, digits)",
            {"difference": diff, "gap_per_alpha_mean_std": per_alpha}, f"difference > {CRITERIA['gap_difference']:g}",
            diff > CRITERIA["gap_difference"],
            note=f"standard error of the difference {se:.4f} (seed std / sqrt(seeds), both alphas); the sign of each "
                 "gap is reported too: a positive difference between two negative gaps means curricula hurt less, "
                 "not that they help"),
    ]
    out += [
        Claim.finding(
            "accuracy-per-ordering",
            "final test accuracy [mean, std over seeds] per ordering and alpha",
            {k: {f"alpha={a:g}": [round(float(v[i].mean()), 4), round(float(v[i].std()), 4)] for i, a in enumerate(alphas)}
             for k, v in final.items()},
            note=f"expert (central, all training data) train accuracy {expert_acc:.4f}"),
        Claim.finding(
            "anti-curriculum-gap",
            "accuracy gap anti-curriculum - random [mean, std over seeds] per alpha",
            {f"alpha={a:g}": [round(float(anti[i].mean()), 4), round(float(anti[i].std()), 4)] for i, a in enumerate(alphas)}),
    ]
    if "curriculum + selection" in final:
        sel = final["curriculum + selection"] - final["random"]
        out.append(Claim.finding(
            "client-selection-gap",
            "curriculum ordering plus client selection by difficulty, minus random ordering [mean, std] per alpha",
            {f"alpha={a:g}": [round(float(sel[i].mean()), 4), round(float(sel[i].std()), 4)] for i, a in enumerate(alphas)}))
    return out


def _plot(ctx: RunContext, cfg, final) -> None:
    import matplotlib.pyplot as plt

    alphas = np.asarray(cfg["dirichlet_alphas"], float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"curriculum": "tab:blue", "anti": "tab:orange", "random": "tab:green", "curriculum + selection": "tab:red"}
    for k, v in final.items():
        a1.errorbar(alphas, v.mean(1), yerr=v.std(1), marker="o", capsize=3, label=k, color=colors[k])
        if k != "random":
            d = v - final["random"]
            a2.errorbar(alphas, d.mean(1), yerr=d.std(1), marker="o", capsize=3, label=f"{k} - random", color=colors[k])
    a1.set(xscale="log", xlabel="Dirichlet alpha (small = heterogeneous)", ylabel=f"test accuracy after {cfg['rounds']} rounds",
           title=f"digits, {cfg['n_clients']} clients, {cfg['n_seeds']} seeds")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set(xscale="log", xlabel="Dirichlet alpha", ylabel="accuracy gap vs random ordering", title="gap vs alpha")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    ctx.savefig(fig, "curricula.png", dpi=90)
