"""Part 2: a small staged classifier, the forget stage at each position, three local unlearners.

Data (``lgrad.data.digits``, 8x8 digits, offline): a seeded 80/20 train/test split.
The *forget stage* F is ``clf_n_forget`` training images, inverted (1 - x), with
fictitious labels (``clf_forget_labels``: "shift" = (true label + 1) mod 10, a
learnable false rule; "random" = uniform labels) -- "fictitious facts" that only F
teaches, on inputs no other stage contains (the analogue of the paper's
fictitious-knowledge forget stage). The three *retained stages* R1..R3 are a random disjoint split of
the other training images with their true labels. A path is an order of
{R1, R2, R3, F}; F sits at position p = 1..4.

Every path starts from the same theta_0 and sees the same minibatches per stage
(``train_stages`` seeds stage s with ``fold_in(key, s)``): the order is the only
difference. After training, each path's model is unlearned on F with GA, NPO
(beta 0.5, reference = the model before unlearning) and SimNPO (beta 1) for
``unlearn_steps`` full-batch Adam steps.

Measured per path and method: retained-task accuracy (true-label test set), the
forget score (accuracy on F's fictitious labels, and mean log-prob), the RE
distance (softmax outputs on the test set) between paths, and to the model
retrained on R1..R3 alone in the same relative order.
"""
from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.data import digits, train_test_split
from lgrad.unlearn import Stage, class_logprob, re_distance, train_stages, unlearn

FORGET = 3  # index of F in the stage list [R1, R2, R3, F]


def init_mlp(key, sizes):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append({"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)})
    return params


def apply_mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def logprob_fn(params, batch):
    x, y = batch
    return class_logprob(apply_mlp(params, x), y)


def ce_loss(params, batch):
    return -jnp.mean(logprob_fn(params, batch))


def make_data(cfg):
    train, test = train_test_split(digits(), 0.2, seed=cfg["seed"])
    rng = np.random.default_rng(cfg["seed"] + 1)
    perm = rng.permutation(len(train.y))
    nf = cfg["clf_n_forget"]
    fi = perm[:nf]
    if cfg["clf_forget_labels"] == "shift":
        labels = (train.y[fi] + 1) % 10
    else:
        labels = rng.integers(0, 10, nf)
    forget = (1.0 - train.x[fi], labels.astype(np.int32))
    rest = perm[nf:]
    retained = [(train.x[r], train.y[r]) for r in np.array_split(rest, 3)]
    return retained, forget, (test.x, test.y)


def path_orders(cfg) -> list[tuple[int, ...]]:
    """For each position p in ``clf_positions`` (1..4) of F, ``clf_orders_per_position`` orders of R1..R3 (seeded choice)."""
    rng = np.random.default_rng(cfg["seed"] + 2)
    perms = list(itertools.permutations(range(3)))
    out = []
    for p in [q - 1 for q in cfg["clf_positions"]]:
        chosen = rng.choice(len(perms), size=min(cfg["clf_orders_per_position"], len(perms)), replace=False)
        for c in sorted(chosen):
            r = list(perms[c])
            out.append(tuple(r[:p] + [FORGET] + r[p:]))
    return out


def run_classifier(cfg: dict[str, Any], ctx) -> dict[str, Any]:
    """Train every path, unlearn each with every method, and summarise (see the module docstring)."""
    retained, forget, test = make_data(cfg)
    stages = _stages(cfg, retained, forget)
    key = jax.random.PRNGKey(cfg["seed"])
    theta0 = init_mlp(jax.random.fold_in(key, 99), [64, cfg["clf_hidden"], cfg["clf_hidden"], 10])
    evaluate = _evaluator(test, forget)
    orders = path_orders(cfg)
    cache: dict = {}
    trained, retrain_probs = [], {}
    for order in ctx.progress(orders, total=len(orders), desc="paths"):
        trained.append(train_stages(ce_loss, theta0, stages, order, key=key, cache=cache).params)
        r_order = tuple(s for s in order if s != FORGET)
        if r_order not in retrain_probs:
            rr = train_stages(ce_loss, theta0, stages, r_order, key=key, cache=cache)
            retrain_probs[r_order] = np.asarray(evaluate(rr.params)["probs"])
    before, after, traj = _unlearn_paths(cfg, evaluate, trained, orders, tuple(jnp.asarray(a) for a in forget))
    return _summarise(cfg, ctx, orders, before, after, traj, retrain_probs)


def _stages(cfg: dict[str, Any], retained, forget) -> list[Stage]:
    """R1..R3 then F, each trained with Adam on its proximal stage loss."""
    to_j = lambda t: tuple(jnp.asarray(a) for a in t)  # noqa: E731
    stages = [
        Stage(to_j(d), cfg["clf_stage_steps"], optax.adam(cfg["clf_lr"]), f"R{i + 1}", batch_size=cfg["clf_batch"], proximal=cfg["clf_proximal"])
        for i, d in enumerate(retained)
    ]
    stages.append(
        Stage(to_j(forget), cfg["clf_stage_steps"], optax.adam(cfg["clf_lr"]), "F", batch_size=min(cfg["clf_batch"], len(forget[1])), proximal=cfg["clf_proximal"])
    )
    return stages


def _evaluator(test, forget):
    """Jitted ``params -> {retain_acc, forget_acc, forget_logp, probs}`` (test set and F)."""
    xt, yt = jnp.asarray(test[0]), jnp.asarray(test[1])
    xf, yf = (jnp.asarray(a) for a in forget)

    @jax.jit
    def evaluate(p):
        logits_t = apply_mlp(p, xt)
        lf = class_logprob(apply_mlp(p, xf), yf)
        lf_all = apply_mlp(p, xf)
        return {
            "retain_acc": jnp.mean(jnp.argmax(logits_t, -1) == yt),
            "forget_acc": jnp.mean(jnp.argmax(lf_all, -1) == yf),
            "forget_logp": jnp.mean(lf),
            "probs": jax.nn.softmax(logits_t, -1),
        }

    return evaluate


def _unlearn_paths(cfg: dict[str, Any], evaluate, trained, orders, forget):
    """Evaluations of every path before and after each method, and the per-step trajectories.

    All paths are unlearned together: one batched ``unlearn`` (one fit) per method;
    with Adam (element-wise) this equals unlearning each path separately."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trained)
    veval = jax.vmap(evaluate)
    ev0 = {k: np.asarray(v) for k, v in veval(stacked).items()}
    before = {o: {k: v[i] for k, v in ev0.items()} for i, o in enumerate(orders)}
    after, traj = {}, {}
    uopt = optax.adam(cfg["unlearn_lr"])
    for method in cfg["unlearn_methods"]:
        u = unlearn(
            method, logprob_fn, stacked, forget, uopt, steps=cfg["unlearn_steps"], batched=True,
            eval_fn=lambda p: {k: v for k, v in veval(p).items() if k != "probs"}, eval_every=1,
        )
        ev = {k: np.asarray(v) for k, v in veval(u.params).items()}
        for i, o in enumerate(orders):
            after[o, method] = {k: v[i] for k, v in ev.items()}
            traj[o, method] = {k: np.asarray(v)[:, i] for k, v in u.evals.items()}
    return before, after, traj


def _summarise(cfg: dict[str, Any], ctx, orders, before, after, traj, retrain_probs) -> dict[str, Any]:
    pos = {o: o.index(FORGET) + 1 for o in orders}
    summary: dict[str, Any] = {"orders": [list(o) for o in orders], "positions": [pos[o] for o in orders]}
    acc_before = np.array([before[o]["retain_acc"] for o in orders])
    summary["retain_acc_before"] = acc_before
    summary["retain_acc_spread_before"] = float(np.ptp(acc_before))
    summary["forget_acc_before"] = np.array([before[o]["forget_acc"] for o in orders])
    summary["forget_logp_before"] = np.array([before[o]["forget_logp"] for o in orders])
    pair_idx = list(itertools.combinations(range(len(orders)), 2))

    def mean_pairwise(probs):
        if not pair_idx:  # a single path: nothing to compare
            return float("nan")
        return float(np.mean([float(re_distance(probs[i], probs[j])) for i, j in pair_idx]))

    def to_retrain(probs):
        return float(np.mean([float(re_distance(p, retrain_probs[tuple(s for s in o if s != FORGET)])) for o, p in zip(orders, probs)]))

    summary["pairwise_re_before"] = mean_pairwise([before[o]["probs"] for o in orders])
    summary["re_to_retrain_before"] = to_retrain([before[o]["probs"] for o in orders])
    ps = np.array([pos[o] for o in orders])
    for method in cfg["unlearn_methods"]:
        out = [after[o, method] for o in orders]
        summary[method] = _method_summary(cfg, summary, ps, out, [traj[o, method] for o in orders])
        summary[method]["pairwise_re_after"] = mean_pairwise([a["probs"] for a in out])
        summary[method]["re_to_retrain_after"] = to_retrain([a["probs"] for a in out])
        for i, o in enumerate(orders):
            ctx.log(f"classifier/{method}", order=list(o), position=pos[o], retain_acc_before=acc_before[i], retain_acc=out[i]["retain_acc"],
                    forget_acc_before=summary["forget_acc_before"][i], forget_acc=out[i]["forget_acc"], forget_logp=out[i]["forget_logp"])
    summary["forget_acc_before_by_p"] = summary[cfg["unlearn_methods"][0]]["forget_acc_before_by_p"]
    return summary


def _method_summary(cfg: dict[str, Any], summary: dict[str, Any], ps: np.ndarray, out: list, traj: list) -> dict[str, Any]:
    """One method's retained accuracy, forget scores by position and trajectories over the paths."""
    acc_before = summary["retain_acc_before"]
    acc = np.array([a["retain_acc"] for a in out])
    facc = np.array([a["forget_acc"] for a in out])
    flogp = np.array([a["forget_logp"] for a in out])
    by_p = lambda v: [float(v[ps == p].mean()) for p in cfg["clf_positions"]]  # noqa: E731
    return {
        "retain_acc": acc,
        "retain_acc_spread": float(acc.max() - acc.min()),
        "retain_acc_std": float(acc.std()),
        "retain_drop": acc_before - acc,
        "retain_drop_spread": float((acc_before - acc).max() - (acc_before - acc).min()),
        "forget_acc": facc,
        "forget_logp": flogp,
        "forget_acc_by_p": by_p(facc),
        "forget_logp_by_p": by_p(flogp),
        "forget_acc_before_by_p": by_p(summary["forget_acc_before"]),
        "forget_logp_before_by_p": by_p(summary["forget_logp_before"]),
        "forget_logp_drop_by_p": by_p(summary["forget_logp_before"] - flogp),
        "traj_forget_acc": np.stack([t["forget_acc"] for t in traj]),
        "traj_retain_acc": np.stack([t["retain_acc"] for t in traj]),
    }
