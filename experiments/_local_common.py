"""Shared code of the layer-local learning reproductions (not an experiment itself).

``local-tpsgd-drtp``, ``local-infopro``, ``local-feature-reconstruction``,
``local-auglocal`` and ``local-man`` each train their paper's rule(s) and a backprop
baseline on the same models (MLP, CNN; the RNN for tpSGD) with the same data, seeds,
optimiser and schedule, through the functions here. ``measure`` returns JSON values
only; the ``*_claim(s)`` functions are pure functions of those measurements, the
config and the experiment's ``CRITERIA`` (see ``docs/papers/local-tpsgd-drtp.md``
and its siblings).

Measurements: ``acc[job]`` with ``job = "dataset/model/activation/rule"`` holds the
per-seed test accuracy at the end (``final``) and 10 epochs before (``before10``,
``None`` when the run is shorter); ``isolation[model/rule]`` the largest cross-block
gradient; ``grad_match[model/rule]`` the largest difference between the interleaved
step and ``grad(sum_k J_k)``; ``memory[model][rule]`` compiled bytes (``peak``,
``temp``); ``depth_memory[rule][depth]`` the tpSGD/backprop probe over depth.
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
from lgrad.engine.config import Choice, Float, Int
from lgrad.local import LocalLearner
from lgrad.local import models as M
from lgrad.train import run_loop

# The shared setting (every experiment's quick / full config starts from these).
COMMON = dict(seed=0, seeds=3, batch_size=64, learning_rate=1e-3, mlp_width=256, mlp_hidden=2, act="relu",
              mem_batch=1024, test_fraction=0.2)
QUICK = dict(COMMON, models=["mlp", "cnn"], datasets=["digits"], cnn_datasets=["digits"], epochs=30,
             digits_epochs=80, cnn_channels=16, cnn_convs=2)
FULL = dict(COMMON, seeds=5, models=["mlp", "cnn"], datasets=["digits", "mnist5k"], cnn_datasets=["digits", "mnist5k"],
            epochs=40, digits_epochs=100, cnn_channels=32, cnn_convs=3)
SMOKE = dict(seeds=2, datasets=["digits"], models=["mlp"], cnn_datasets=[], epochs=1, digits_epochs=1, mlp_width=32,
             mem_batch=64)
LIMITS = {
    "seeds": Int(min=1),
    "datasets": Choice("digits", "mnist5k"),
    "cnn_datasets": Choice("digits", "mnist5k"),
    "digits_epochs": Int(min=1),
    "mlp_width": Int(min=1),
    "mlp_hidden": Int(min=1),
    "cnn_channels": Int(min=1),
    "cnn_convs": Int(min=1),
    "act": Choice(*M.ACTIVATIONS),
    "mem_batch": Int(min=1),
    "test_fraction": Float(gt=0, lt=1),
}
# which rules run on which model (the RNN is tpSGD's extension; the others are not defined for it here)
RNN_RULES = ("backprop", "tpsgd")


def memory_estimate(cfg: dict[str, Any]) -> int:
    """Bytes (float32, a rough lower bound): the MNIST-5k arrays, the widest model's
    parameters with Adam state (x4) for every seed, and the activations of the memory
    probe (``mem_batch`` rows through the deepest model probed, CNN maps included)."""
    pixels, classes = 28 * 28, 10
    w, h = cfg["mlp_width"], cfg["mlp_hidden"]
    mlp = pixels * w + (h - 1) * w * w + w * classes
    rnn = 28 * cfg.get("rnn_hidden", 0) + cfg.get("rnn_hidden", 0) ** 2
    params = 4 * 4 * cfg["seeds"] * max(mlp, rnn, 9 * cfg["cnn_channels"] ** 2 * cfg["cnn_convs"])
    depth = max(cfg.get("mem_depths", []), default=h)
    cnn_acts = cfg["cnn_convs"] * cfg["cnn_channels"] * pixels if "cnn" in cfg["models"] else 0
    acts = 4 * cfg["mem_batch"] * max(depth * w, cnn_acts)
    probe = 4 * 4 * (pixels * w + depth * w * w)
    return 4 * 5000 * pixels + params + acts + probe + 4 * cfg["seeds"] * cfg["batch_size"] * pixels


# ---- models and training ----------------------------------------------------------------
def act_of(rule: str, kind: str, cfg: dict) -> str:
    """The activation of ``rule``'s model: DRTP's paper uses tanh units; the RNN is tanh."""
    if kind == "rnn":
        return "tanh"
    return cfg["drtp_act"] if rule == "drtp" else cfg["act"]


def load(name: str, seed: int, test_fraction: float):
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


def options(rule: str, cfg: dict) -> dict:
    """The rule's options from the config (tpSGD's loss, MAN's momentum, AugLocal's depth)."""
    if rule == "tpsgd":
        return {"loss": cfg["tpsgd_loss"]}
    if rule == "man":
        return {"momentum": cfg["man_momentum"]}
    if rule == "auglocal":
        return {"depth": cfg["auglocal_depth"]}
    return {}


def learner(kind, side, C, cfg, rule, seed, act) -> LocalLearner:
    blocks, in_shape = _model(kind, side, C, cfg, rule, seed, act)
    return LocalLearner(blocks, rule, input_shape=in_shape, num_classes=C, key=jax.random.PRNGKey(seed + 1),
                        rule_options=options(rule, cfg))


def epoch_orders(n: int, seeds: list[int], epochs: int) -> jax.Array:
    """``(seeds, epochs, n)``: seed ``s``'s batch order in epoch ``e``, the permutation
    ``jax.random.permutation(fold_in(PRNGKey(s), e), n)``. Computed once per dataset
    (the same numbers every step's own permutation would give, without a sort per step)."""
    perm = jax.jit(lambda k, e: jax.random.permutation(jax.random.fold_in(k, e), n))
    return jnp.stack([jnp.stack([perm(jax.random.PRNGKey(s), e) for e in range(epochs)]) for s in seeds])


def _setup(kind, act, rule, cfg, data, orders):
    """Learner, per-seed carries (train state, epoch orders), the one-seed step and test accuracy."""
    tr, te, side, C = data
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    learners = [learner(kind, side, C, cfg, rule, s, act) for s in seeds]
    L, shape, tx = learners[0], learners[0].spec.input_shape, optax.adam(cfg["learning_rate"])
    states = [lr.init_train_state(tx, jax.random.PRNGKey(s)) for lr, s in zip(learners, seeds)]
    carries = list(zip(states, orders))
    xtr, ytr = jnp.asarray(tr.x.reshape((-1,) + shape)), jnp.asarray(tr.y)
    xte, yte = jnp.asarray(te.x.reshape((-1,) + shape)), jnp.asarray(te.y)
    n, bs = xtr.shape[0], cfg["batch_size"]
    spe = n // bs

    def one(state, order):
        def batch_fn(step, key):  # epoch-wise shuffling: a permutation per epoch, batch = its slice
            idx = jax.lax.dynamic_slice_in_dim(order[step // spe], (step % spe) * bs, bs)
            return xtr[idx], ytr[idx]

        return L.train_step(tx, batch_fn)(state)

    def acc(params):
        return 100.0 * jnp.mean(jnp.argmax(L.forward(params, xte), -1) == yte)

    return L, carries, spe, one, acc


def train_seeds(kind, act, rule, cfg, data, epochs, orders, progress=None) -> tuple[np.ndarray, LocalLearner]:
    """All seeds of one (model, rule), each seed its own initialisation, projections / auxiliary nets
    and epoch-wise batch order (``orders``, :func:`epoch_orders`), one seed after the other through
    ``lgrad.train.run_loop`` with ``host_steps=True`` (one compiled step per (model, rule) called from
    Python: on XLA:CPU the cheapest layout, see ``docs/papers/local-tpsgd-drtp.md#cost``; checkpointable
    like every run_loop). Returns test accuracy (epochs + 1, seeds): at the start and after every epoch."""
    L, carries, spe, one, acc = _setup(kind, act, rule, cfg, data, orders)

    def step(c):
        return (one(*c)[0], c[1]), {}

    def evaluate(c):
        return {"acc": acc(c[0].params)}

    curves = [
        run_loop(step, c, steps=spe * epochs, eval_fn=evaluate, eval_every=spe, progress=progress, host_steps=True).evals["acc"]
        for c in carries
    ]
    return np.stack(curves, axis=1), L


def isolation(lrn: LocalLearner, x, y) -> tuple[float, float]:
    """max |dJ_k/dtheta_j| over j != k (must be exactly 0), and max |grads - grad(sum J)|."""
    params, state = lrn.init_params(), lrn.init_state()
    # the cross-block entries are structural zeros (stop_gradient), exact at any optimisation level:
    # compiled without LLVM optimisation (a one-off program; its other entries are not used)
    jac_fn = jax.jit(jax.jacrev(lambda p: lrn.local_losses(p, state, x, y))).lower(params)
    jac = jac_fn.compile({"xla_backend_optimization_level": 0})(params)
    K = len(lrn.blocks)
    cross = 0.0
    for j in range(K):
        for leaf in jax.tree.leaves(jac["blocks"][j]) + jax.tree.leaves(jac["aux"][j]):
            rows = np.abs(np.asarray(leaf)).reshape(K, -1).max(axis=1)
            cross = max(cross, float(np.delete(rows, j).max(initial=0.0)))
    return cross, _sum_form_difference(lrn, params, state, x, y)


def _sum_form_difference(lrn: LocalLearner, params, state, x, y) -> float:
    """max |interleaved step's grads - grad(sum_k J_k)|, both in float64: an exactness check of
    the algebra, not of float32 rounding (in float32 the two orders of summation differ by up
    to 1.2e-6 on the DRTP CNN; docs/papers/local-tpsgd-drtp.md, "Criteria")."""
    with jax.enable_x64(True):
        wide = lambda t: jax.tree.map(  # noqa: E731
            lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, t)
        params, state, x = wide(params), wide(state), wide(x)
        g, _ = jax.jit(lrn.grads)(params, state, x, y)
        g2 = jax.jit(jax.grad(lambda p: lrn.local_losses(p, state, x, y).sum()))(params)
        leaves = zip(jax.tree.leaves(g), jax.tree.leaves(g2))  # differences on the host (no compile per leaf shape)
        return max((float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in leaves), default=0.0)


def jobs(cfg) -> list[tuple[str, str, str, str]]:
    """(dataset, model, activation, rule), with a backprop baseline for every activation in use."""
    out = []
    for ds in cfg["datasets"]:
        for kind in cfg["models"]:
            if kind == "cnn" and ds not in cfg["cnn_datasets"]:
                continue
            rules = [r for r in cfg["rules"] if r != "backprop" and (kind != "rnn" or r in RNN_RULES)]
            for act in dict.fromkeys(act_of(r, kind, cfg) for r in rules):
                out.append((ds, kind, act, "backprop"))
            out += [(ds, kind, act_of(r, kind, cfg), r) for r in rules]
    return out


def train_all(cfg, ctx: RunContext) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every job of :func:`jobs`: the measurements (final accuracies, isolation) and the curves (for the plot)."""
    data = {ds: load(ds, cfg["seed"], cfg["test_fraction"]) for ds in cfg["datasets"]}
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    ep = {ds: cfg["digits_epochs"] if ds == "digits" else cfg["epochs"] for ds in data}
    orders = {ds: epoch_orders(len(data[ds][0].y), seeds, ep[ds]) for ds in data}
    curves: dict[str, np.ndarray] = {}
    acc, iso, match = {}, {}, {}
    t0 = time.perf_counter()
    for ds, kind, act, rule in jobs(cfg):
        job = f"{ds}/{kind}/{act}/{rule}"
        with ctx.variant(job):
            curve, lrn = train_seeds(kind, act, rule, cfg, data[ds], ep[ds], orders[ds], progress=ctx.progress)
        curves[job] = curve
        acc[job] = {"final": curve[-1].tolist(), "before10": curve[-11].tolist() if len(curve) > 11 else None}
        for e, a in enumerate(curve):
            ctx.log(job, step=e, test_acc_mean=float(a.mean()), test_acc=a)
        if rule != "backprop" and ds == cfg["datasets"][0]:
            tr = data[ds][0]
            shape = lrn.spec.input_shape
            iso[f"{kind}/{rule}"], match[f"{kind}/{rule}"] = isolation(
                lrn, jnp.asarray(tr.x[:8].reshape((-1,) + shape)), jnp.asarray(tr.y[:8]))
    return dict(acc=acc, isolation=iso, grad_match=match, train_s=time.perf_counter() - t0), curves


def _abstract(make) -> tuple[LocalLearner, Any, Any]:
    """``make()``'s learner with its params and rule state as shapes only (``jax.eval_shape``):
    what a compiled-memory probe needs (the program depends on shapes, not values), with no
    initialiser run or compiled."""
    box: list[LocalLearner] = []

    def build():
        box.append(make())
        return box[0].init_params(), box[0].init_state()

    params, state = jax.eval_shape(build)
    return box[0], params, state


def _grad_memory(make, Bm: int) -> dict[str, int]:
    """Compiled bytes (peak, temp) of ``make()``'s gradient step on a batch of ``Bm`` (float inputs, int labels)."""
    lrn, params, state = _abstract(make)
    x = jax.ShapeDtypeStruct((Bm,) + lrn.spec.input_shape, jnp.float32)
    y = jax.ShapeDtypeStruct((Bm,), jnp.int32)
    m = compiled_memory(lrn.grads, params, state, x, y)
    return {"peak": m["peak"], "temp": m["temp"]}


def memory_probe(cfg) -> dict[str, dict[str, dict[str, int]]]:
    """Compiled memory (bytes: peak, temp) of every rule's gradient step and backprop's, same model and batch."""
    mem: dict[str, dict[str, dict[str, int]]] = {}
    Bm, seed = cfg["mem_batch"], cfg["seed"]
    for kind in [k for k in ("mlp", "cnn") if k in cfg["models"]]:
        mem[kind] = {}
        for rule in dict.fromkeys(["backprop"] + list(cfg["rules"])):
            mem[kind][rule] = _grad_memory(lambda: learner(kind, 28, 10, cfg, rule, seed, act_of(rule, kind, cfg)), Bm)
    return mem


def depth_probe(cfg) -> dict[str, dict[str, dict[str, int]]]:
    """tpSGD's and backprop's compiled memory on MLPs of ``mem_depths`` hidden blocks."""
    out: dict[str, dict[str, dict[str, int]]] = {"backprop": {}, "tpsgd": {}}
    Bm, seed = cfg["mem_batch"], cfg["seed"]
    for D in cfg["mem_depths"]:
        for rule in out:
            def make():
                blocks = M.mlp(784, (cfg["mlp_width"],) * D, 10, rngs=nnx.Rngs(seed))
                return LocalLearner(blocks, rule, input_shape=(784,), num_classes=10, rule_options=options(rule, cfg))

            out[rule][str(D)] = _grad_memory(make, Bm)
    return out


def measure(cfg: dict[str, Any], ctx: RunContext, *, figure: str, title: str, depth: bool = False) -> dict[str, Any]:
    """Train every job, probe isolation and memory (and tpSGD's depth probe with ``depth``), plot; JSON out."""
    m, curves = train_all(cfg, ctx)
    with ctx.variant("memory"):
        m["memory"] = memory_probe(cfg)
        if depth:
            m["depth_memory"] = depth_probe(cfg)
    ctx.log("summary", final_test_acc={k: v["final"] for k, v in m["acc"].items()}, isolation_max_cross_grad=m["isolation"],
            grad_vs_sum_form=m["grad_match"], memory=m["memory"], depth_memory=m.get("depth_memory"), train_seconds=m["train_s"])
    plot(ctx, curves, ratios(m["memory"]), m.get("depth_memory"), cfg, figure, title)
    return m


# ---- claims (pure: measurements as read back from JSON, the config, CRITERIA) -------------
def isolation_claims(m: dict, criteria: dict) -> list[Claim]:
    if not m["isolation"]:
        return []
    return [
        Claim.at_most(
            "gradient-isolation-exact",
            "each block's update depends only on its own local loss: d J_k / d theta_j = 0 exactly for j != k "
            f"(rules {sorted({k.split('/')[1] for k in m['isolation']})}, all models)",
            max(m["isolation"].values()), criteria["cross_grad"],
            note=f"max |dJ_k/dtheta_j| over j != k from jax.jacrev of the stop-gradient local losses; per model/rule: {m['isolation']}",
        ),
        Claim.at_most(
            "interleaved-step-equals-sum-form", "the forward-only interleaved step returns exactly grad(sum_k J_k)",
            max(m["grad_match"].values()), criteria["grad_match"],
            note=f"max abs difference over all gradient leaves, both computed in float64; per model/rule: {m['grad_match']}",
        ),
    ]


def gaps(acc: dict, rule: str, kinds) -> dict[str, list[float]]:
    """backprop minus ``rule`` final test accuracy per seed (paired), per dataset/model, same activation."""
    out = {}
    for job, a in acc.items():
        ds, k, act, r = job.split("/")
        bp = acc.get(f"{ds}/{k}/{act}/backprop")
        if r == rule and k in kinds and bp is not None:
            out[f"{ds}/{k}" + (f" ({act})" if k != "rnn" else "")] = [b - x for b, x in zip(bp["final"], a["final"])]
    return out


def _late_change(acc: dict, model_key: str):
    """Mean accuracy change over the last 10 epochs, all rules of that dataset/model (is it converged?)."""
    d = [np.mean(a["final"]) - np.mean(a["before10"]) for job, a in acc.items()
         if "/".join(job.split("/")[:2]) == model_key and a["before10"] is not None]
    return round(float(np.mean(d)), 2) if d else None


def gap_claim(cid: str, statement: str, m: dict, rule: str, kinds, threshold: float, cfg: dict, note: str = "") -> Claim | None:
    """Pass when the mean (over seeds) gap is at most ``threshold`` points on every dataset/model."""
    g = gaps(m["acc"], rule, kinds)
    if not g:
        return None
    means = {k: float(np.mean(v)) for k, v in g.items()}
    worst = max(means, key=means.get)
    measured = {k: {"mean": round(means[k], 2), "std": round(float(np.std(v)), 2), "per_seed": [round(x, 2) for x in v]}
                for k, v in g.items()}
    late = {k: _late_change(m["acc"], k.split(" ")[0]) for k in g}
    return Claim.holds(
        cid, statement, measured, f"mean gap <= {threshold:g} points on every dataset/model", means[worst] <= threshold,
        note=f"backprop minus rule test accuracy (points) after {cfg['digits_epochs']} epochs (digits) / {cfg['epochs']} "
             f"(MNIST-5k), {cfg['seeds']} seeds paired by seed; worst {worst}: {means[worst]:.2f}; mean change over the "
             f"last 10 epochs (all rules of that model): {late}" + (f"; {note}" if note else ""),
    )


def ratios(mem: dict) -> dict[str, dict[str, dict[str, float]]]:
    """Compiled peak and temporary memory of each rule / backprop's, per model."""
    return {kind: {r: {"peak": v["peak"] / mm["backprop"]["peak"], "temp": v["temp"] / max(mm["backprop"]["temp"], 1)}
                   for r, v in mm.items()} for kind, mm in mem.items()}


def memory_findings(m: dict, cfg: dict, papers: str) -> list[Claim]:
    """``memory-ratios-{model}``: each rule's compiled memory / backprop's (a finding; ``papers``: what they report)."""
    out = []
    for kind, rr in ratios(m["memory"]).items():
        out.append(Claim.finding(
            f"memory-ratios-{kind}",
            f"compiled memory of each rule's gradient step / backprop's ({kind.upper()}, batch {cfg['mem_batch']}); {papers}",
            {r: {"peak": round(v["peak"], 3), "temp": round(v["temp"], 3)} for r, v in rr.items()},
            note="shallow nets: the auxiliary heads can cost more than the activations they save; XLA memory_analysis "
                 "of the gradient step (peak = arguments + outputs + temporaries - aliased)",
        ))
    return out


# ---- plot --------------------------------------------------------------------------------
def plot(ctx: RunContext, curves, ratio, depth_mem, cfg, figure: str, title: str) -> None:
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(job.rsplit("/", 1)[0] for job in curves))
    colors = dict(zip(["backprop", "drtp", "tpsgd", "infopro", "feature_reconstruction", "auglocal", "man"],
                      plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    extra = len(ratio) + (1 if depth_mem else 0)
    ncol = max(2, min(3, len(panels)))
    nrow = (len(panels) + ncol - 1) // ncol + (extra + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), squeeze=False)
    flat = list(axes.ravel())
    lo = max(0, min(float(a[-1].min()) for a in curves.values()) - 10) if curves else 0
    for ax, panel in zip(flat, panels):
        for job, acc in curves.items():
            if job.rsplit("/", 1)[0] != panel:
                continue
            r, mean = job.rsplit("/", 1)[1], acc.mean(axis=1)
            xs = np.arange(len(mean))
            ax.plot(xs, mean, label=f"{r} ({mean[-1]:.1f})", color=colors.get(r), lw=1.5, ls="--" if r == "backprop" else "-")
            ax.fill_between(xs, acc.min(axis=1), acc.max(axis=1), color=colors.get(r), alpha=0.15, lw=0)
        ax.set(title=panel, xlabel="epoch", ylabel=f"test accuracy (%), mean of {cfg['seeds']} seeds",
               ylim=(lo, 100))
        ax.legend(fontsize=7)
    rest = flat[(len(panels) + ncol - 1) // ncol * ncol:]
    for ax in flat:
        ax.axis("on" if ax in flat[:len(panels)] or ax in rest[:extra] else "off")
    for ax, (kind, rr) in zip(rest, ratio.items()):
        names = list(rr)
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, [rr[n]["peak"] for n in names], 0.4, label="peak")
        ax.bar(xs + 0.2, [rr[n]["temp"] for n in names], 0.4, label="temporaries")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xticks(xs, [n.replace("feature_reconstruction", "feat-rec") for n in names], rotation=35, fontsize=7)
        ax.set(ylabel="bytes / backprop's", title=f"compiled memory, {kind.upper()} (batch {cfg['mem_batch']})")
        ax.legend(fontsize=7)
    if depth_mem:
        ax = rest[len(ratio)]
        for rule, mm in depth_mem.items():
            ds_ = sorted(mm, key=int)
            ax.plot([int(d) for d in ds_], [mm[d]["temp"] / 2**20 for d in ds_], "o-", label=rule)
        ax.set(xlabel="MLP depth (hidden blocks)", ylabel="temporary MiB", title="temporaries vs depth")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title} (band: min-max over seeds)")
    fig.tight_layout()
    ctx.savefig(fig, figure, dpi=90)
