"""Li₂ grokking scaling law: the memorisation/generalisation boundary at n* ∝ M log M.

Paper: Y. Tian, "Provable Scaling Laws of Feature Emergence from Learning Dynamics
of Grokking" (2025), Li₂ framework; docs/papers/grokking-scaling.md.
Command: ``lgrad run grokking-scaling --quick`` (``--full`` adds M = 53, 71, 97, 127,
more fractions and seeds, 2,000 epochs).
Expected: modular addition a + b mod M with a two-layer quadratic network whose top
layer is ridge-solved at every step: with a training fraction <= 0.6 x the critical
fraction c log M / M (c = 2.7482) the network memorises (train accuracy 1, test ~0);
at >= 1.5 x it generalises (test >= 0.95).

Every (fraction, seed) cell of one M shares shapes (the training set is a 0/1 mask
over all M^2 pairs), so all cells of one M train as one vmapped program. There is
one training path (:func:`cell_program`): the run drives its step, vmapped over the
cells, with ``lgrad.train.run_loop`` (so ``lgrad run --checkpoint-every/--resume``
checkpoint it), and a sweep cell (:func:`train_cell`) is ``lgrad.train.scan_steps``
of the same step, e.g.
``lgrad sweep grokking-scaling --grid modulus=23,37 --grid multiple=0.5,1,2 --seeds 2``.
Before this (until the training core moved to ``lgrad.train``) the run went through
``lgrad.sweep.run_cells``; the move left every claim value and metrics.jsonl of
the quick run unchanged, bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.engine import Claim, RunContext
from lgrad.local import ridge_solve
from lgrad.train import run_loop, scan_steps

NAME = "grokking-scaling"
PAPER = "Tian 2025, Provable Scaling Laws of Feature Emergence from Learning Dynamics of Grokking (Li2)"
DESCRIPTION = "Modular addition with a ridge-solved top layer: memorisation below, generalisation above c*log(M)/M."
EXPECTED = "test accuracy <= 0.05 (train 1.0) at <= 0.6x critical fraction; >= 0.95 at >= 1.5x."

CRITICAL_C = 2.7482  # the authors' estimator of c in n* = c M log M

CONFIGS = {
    "quick": dict(
        seed=0,
        moduli=[23, 37],
        multiples=[0.5, 0.6, 1.0, 1.5, 2.0],
        n_seeds=2,
        hidden=256,
        epochs=2000,  # M=37 at 1.5x had test accuracy 0.06 after 1,000 epochs: grokking is delayed
        learning_rate=1e-2,
        weight_decay=5e-5,
        ridge=1e-3,
        init_scale=0.1,
        activation="square",
        eval_every=50,
        modulus=23,  # the cell of `lgrad sweep grokking-scaling --grid modulus=... --grid multiple=...`
        multiple=1.0,
        strategy="vmap",
    ),
    "full": dict(
        seed=0,
        moduli=[23, 37, 53, 71, 97, 127],
        multiples=[0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0],
        n_seeds=3,
        hidden=256,
        epochs=2000,
        learning_rate=1e-2,
        weight_decay=5e-5,
        ridge=1e-3,
        init_scale=0.1,
        activation="square",
        eval_every=50,
        modulus=23,
        multiple=1.0,
        strategy="vmap",
    ),
}
SMOKE = dict(moduli=[7], multiples=[0.5, 2.0], n_seeds=1, hidden=16, epochs=20, eval_every=10, modulus=7)

ACTIVATIONS = {"square": lambda h: h * h, "relu": jax.nn.relu}


def critical_fraction(m: int, c: float = CRITICAL_C) -> float:
    """c log M / M: the training fraction at the predicted boundary n* = c M log M."""
    return c * math.log(m) / m


def modular_addition(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All M^2 pairs (a, b) and labels (a + b) mod M."""
    a, b = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    a, b = a.ravel(), b.ravel()
    return a, b, (a + b) % m


def make_cell(m: int, cfg: dict[str, Any]):
    """(init, step, evaluate) for one modulus; each acts on one cell and is vmapped.

    Model (docs/papers/grokking-scaling.md): h = W x with x = [onehot(a); onehot(b)] (so h = W[:, a] +
    W[:, M + b]), F = sigma(h), o = V F with V the ridge solution on the training rows
    (no gradient through it); loss = mean over training rows of
    ||o - mean(o) - (e_y - 1/M)||^2; Adam with coupled (L2) weight decay on W only.
    """
    if cfg["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {cfg['activation']!r}")
    sigma = ACTIVATIONS[cfg["activation"]]
    a, b, y = modular_addition(m)
    a, b, y = jnp.asarray(a), jnp.asarray(b), jnp.asarray(y)
    n = m * m
    targets = jax.nn.one_hot(y, m) - 1.0 / m
    tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"]), optax.adam(cfg["learning_rate"]))
    ridge = cfg["ridge"]

    def features(w):
        h = w[:, a].T + w[:, m + b].T  # (N, K)
        return sigma(h)

    def outputs(w, mask):
        f = features(w)
        v = ridge_solve(f, targets, ridge, weights=mask)
        return f @ v.T

    def loss(w, mask):
        o = outputs(w, mask)
        r = o - o.mean(axis=1, keepdims=True) - targets
        return jnp.sum(mask * jnp.sum(r * r, axis=1)) / jnp.sum(mask)

    def init(fraction, key):
        k_split, k_init = jax.random.split(key)
        n_train = jnp.clip(jnp.round(fraction * n), 1, n - 1).astype(jnp.int32)
        rank = jnp.argsort(jax.random.permutation(k_split, n))
        mask = (rank < n_train).astype(jnp.float32)
        w = cfg["init_scale"] * jax.random.normal(k_init, (cfg["hidden"], 2 * m))
        return {"w": w, "opt": tx.init(w), "mask": mask}

    def step(cell):
        value, grad = jax.value_and_grad(loss)(cell["w"], cell["mask"])
        updates, opt = tx.update(grad, cell["opt"], cell["w"])
        return {"w": optax.apply_updates(cell["w"], updates), "opt": opt, "mask": cell["mask"]}, {"loss": value}

    def evaluate(cell):
        mask = cell["mask"]
        correct = (jnp.argmax(outputs(cell["w"], mask), axis=1) == y).astype(jnp.float32)
        return {
            "train_acc": jnp.sum(correct * mask) / jnp.sum(mask),
            "test_acc": jnp.sum(correct * (1 - mask)) / jnp.maximum(jnp.sum(1 - mask), 1.0),
        }

    return init, step, evaluate


# --- the single training path: one cell = (modulus, multiple, seed) -------------------
# The carry is ``(cell, hp)``: the cell's hyperparameters travel with it (traced
# scalars), so the main run (``run_loop`` of the vmapped step, checkpointable) and a
# sweep cell (``scan_steps``, vmapped by ``lgrad.sweep``) compile the same program.
SWEEPABLE = ("multiple", "learning_rate", "weight_decay", "ridge", "init_scale")
SWEEP_METRIC = ("test_acc", "max")


def cell_program(static: dict[str, Any]) -> tuple[Callable, Callable, Callable]:
    """``(init(hp, key), step, evaluate)`` on the carry ``(cell, hp)`` of modulus
    ``static["modulus"]``; ``hp`` holds the ``SWEEPABLE`` keys (``multiple`` x the
    critical fraction is the training fraction)."""
    m = static["modulus"]

    def fns(hp):
        return make_cell(m, {**static, **hp})

    def init(hp, key):
        return fns(hp)[0](hp["multiple"] * critical_fraction(m), key), hp

    def step(carry):
        cell, hp = carry
        cell, metrics = fns(hp)[1](cell)
        return (cell, hp), metrics

    def evaluate(carry):
        cell, hp = carry
        return fns(hp)[2](cell)

    return init, step, evaluate


def train_cell(static: dict[str, Any], hp: dict[str, Any], key: jax.Array) -> dict[str, jax.Array]:
    """Train one cell: modulus ``static["modulus"]``, training fraction ``hp["multiple"]``
    x the critical fraction, seed ``key``. Returns the final train/test accuracy and
    their curves every ``eval_every`` epochs (pure and traceable: ``lgrad.sweep``
    vmaps it over cells that share the modulus)."""
    init, step, evaluate = cell_program(static)
    carry = init(hp, key)
    first = evaluate(carry)
    carry, _, curve = scan_steps(step, carry, static["epochs"], eval_every=static["eval_every"], eval_fn=evaluate)
    final = evaluate(carry)
    return {
        "train_acc": final["train_acc"],
        "test_acc": final["test_acc"],
        "train_curve": jnp.concatenate([first["train_acc"][None], curve["train_acc"]]),
        "test_curve": jnp.concatenate([first["test_acc"][None], curve["test_acc"]]),
    }


def train_modulus(m: int, cfg: dict[str, Any], ctx: RunContext):
    """Every (multiple, seed) cell of modulus m: ``run_loop`` of the step vmapped over
    the cells (``strategy="vmap"``) or one ``run_loop`` per cell (``"sequential"``)."""
    if cfg["strategy"] not in ("vmap", "sequential"):
        raise ValueError(f"strategy must be 'vmap' or 'sequential', got {cfg['strategy']!r}")
    static = {k: v for k, v in cfg.items() if k not in SWEEPABLE and k != "seed"}
    static["modulus"] = m
    multiples = np.asarray(cfg["multiples"], np.float64)
    seeds = np.arange(cfg["n_seeds"])
    mult_grid, seed_grid = np.meshgrid(multiples, seeds, indexing="ij")
    hps = {k: np.full(mult_grid.size, cfg[k]) for k in SWEEPABLE}
    hps["multiple"] = mult_grid.ravel()
    keys = jnp.stack([jax.random.PRNGKey(cfg["seed"] + 1000 * m + int(s)) for s in seed_grid.ravel()])
    init, step, evaluate = cell_program(static)
    groups = [slice(None)] if cfg["strategy"] == "vmap" else [slice(i, i + 1) for i in range(mult_grid.size)]
    evals = []
    for g in groups:
        # Jitted, as inside a sweep cell: an eager init rounds init_scale * normal differently.
        carry = jax.jit(jax.vmap(init))({k: jnp.asarray(v[g]) for k, v in hps.items()}, keys[g])
        res = run_loop(
            jax.vmap(step),
            carry,
            steps=cfg["epochs"],
            eval_fn=jax.vmap(evaluate),
            eval_every=cfg["eval_every"],
            progress=lambda total, desc: ctx.progress(total=total, desc=f"M={m} ({mult_grid.size} cells)"),
        )
        evals.append(res.evals)
    shape = mult_grid.shape
    curves = {k: np.concatenate([np.asarray(e[k]) for e in evals], axis=1).reshape((-1,) + shape) for k in ("train_acc", "test_acc")}
    final = {k: c[-1] for k, c in curves.items()}  # run() checks that eval_every divides epochs
    return final, curves, res.eval_steps


def _boundary(multiples: np.ndarray, test: np.ndarray, crit: float) -> dict[str, Any]:
    """Largest failing and smallest generalising multiple (all seeds >= 0.95 / any below)."""
    ok = np.all(test >= 0.95, axis=1)
    gen = [m for m, g in zip(multiples, ok) if g]
    fail = [m for m, g in zip(multiples, ok) if not g]
    smallest = min(gen) if gen else None
    below = max([m for m in fail if smallest is None or m < smallest], default=None)
    if smallest is not None and below is not None:
        mult = math.sqrt(smallest * below)
    else:
        mult = smallest if smallest is not None else None
    return {
        "smallest_generalising_multiple": smallest,
        "largest_failing_multiple_below": below,
        "boundary_multiple": mult,
        "boundary_fraction": None if mult is None else mult * crit,
    }


def _compare_hypotheses(boundaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Fit b(M) = alpha log M / M and b(M) = beta (one parameter each) in log space."""
    ms = [m for m, b in boundaries.items() if b["boundary_fraction"] is not None]
    if len(ms) < 2:
        return {"note": "fewer than two moduli with a located boundary: no comparison"}
    logb = np.log([boundaries[m]["boundary_fraction"] for m in ms])
    law = np.log([math.log(m) / m for m in ms])
    alpha = float(np.exp(np.mean(logb - law)))
    beta = float(np.exp(np.mean(logb)))
    rms_law = float(np.sqrt(np.mean((logb - (np.log(alpha) + law)) ** 2)))
    rms_const = float(np.sqrt(np.mean((logb - np.log(beta)) ** 2)))
    return {
        "moduli": ms,
        "fitted_c_logM_over_M": alpha,
        "fitted_constant_fraction": beta,
        "rms_log_residual_scaling_law": rms_law,
        "rms_log_residual_constant": rms_const,
        "better_fit": "c*log(M)/M" if rms_law < rms_const else "constant fraction",
    }


def run(config: dict[str, Any], ctx: RunContext) -> list[Claim]:
    cfg = dict(config)
    if cfg["n_seeds"] < 1 or cfg["epochs"] < 1 or not cfg["moduli"] or not cfg["multiples"]:
        raise ValueError("n_seeds, epochs, moduli and multiples must be non-empty / positive")
    if cfg["eval_every"] < 1 or cfg["epochs"] % cfg["eval_every"]:
        raise ValueError("eval_every must be >= 1 and divide epochs")
    multiples = np.asarray(cfg["multiples"], np.float64)
    finals, curves, boundaries = {}, {}, {}
    for m in cfg["moduli"]:
        final, curve, eval_steps = train_modulus(m, cfg, ctx)
        finals[m], curves[m] = final, curve
        crit = critical_fraction(m)
        boundaries[m] = _boundary(multiples, final["test_acc"], crit)
        for i, mult in enumerate(multiples):
            for s in range(cfg["n_seeds"]):
                ctx.log(
                    "final",
                    M=m,
                    multiple=float(mult),
                    fraction=float(mult * crit),
                    seed=s,
                    train_acc=final["train_acc"][i, s],
                    test_acc=final["test_acc"][i, s],
                )
                for t, step in enumerate(eval_steps):
                    ctx.log(f"curve/M={m}/x{mult:g}/seed{s}", step=int(step), train_acc=curve["train_acc"][t, i, s], test_acc=curve["test_acc"][t, i, s])
    comparison = _compare_hypotheses(boundaries)
    ctx.log("boundary", boundaries=boundaries, comparison=comparison)
    _plot(ctx, cfg, finals, curves, eval_steps)

    low = multiples <= 0.6 + 1e-9
    high = multiples >= 1.5 - 1e-9
    low_test = max(float(finals[m]["test_acc"][low].max()) for m in finals) if low.any() else float("nan")
    low_train = min(float(finals[m]["train_acc"][low].min()) for m in finals) if low.any() else float("nan")
    high_test = min(float(finals[m]["test_acc"][high].min()) for m in finals) if high.any() else float("nan")
    return [
        Claim.holds(
            "memorise-below",
            "at <= 0.6x the critical fraction the network memorises: train accuracy 1.0, test accuracy <= 0.05",
            {"max_test_acc": low_test, "min_train_acc": low_train},
            "max test <= 0.05 and min train == 1.0 over all M, seeds, multiples <= 0.6",
            low_test <= 0.05 and low_train >= 1.0,
        ),
        Claim.at_least(
            "generalise-above",
            "at >= 1.5x the critical fraction the network generalises (min test accuracy over M and seeds)",
            high_test,
            0.95,
        ),
        Claim.finding(
            "boundary-per-M",
            "smallest training fraction (multiple of c log M / M) at which every seed generalises",
            {str(m): b for m, b in boundaries.items()},
        ),
        Claim.finding(
            "scaling-law-vs-constant",
            "which hypothesis fits the measured boundaries better: c log M / M or a constant fraction",
            comparison,
        ),
    ]


def _plot(ctx: RunContext, cfg, finals, curves, eval_steps) -> None:
    import matplotlib.pyplot as plt

    moduli = list(finals)
    multiples = cfg["multiples"]
    heat = np.array([finals[m]["test_acc"].mean(axis=1) for m in moduli])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    ax = axes[0]
    im = ax.imshow(heat, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(multiples)), [f"{x:g}x" for x in multiples])
    ax.set_yticks(range(len(moduli)), [str(m) for m in moduli])
    for i in range(heat.shape[0]):
        for j in range(heat.shape[1]):
            ax.text(j, i, f"{heat[i, j]:.2f}", ha="center", va="center", color="w" if heat[i, j] < 0.5 else "k", fontsize=8)
    ax.set_xlabel("training fraction / (c log M / M)")
    ax.set_ylabel("M")
    ax.set_title("test accuracy (mean over seeds)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1]
    m = moduli[-1]
    for j, mult in enumerate(multiples):
        color = plt.cm.plasma(j / max(1, len(multiples) - 1))
        ax.plot(eval_steps, curves[m]["train_acc"][:, j, 0], ls="--", color=color, lw=1)
        ax.plot(eval_steps, curves[m]["test_acc"][:, j, 0], color=color, lw=1.6, label=f"{mult:g}x")
    ax.set_xlabel("epoch (full batch)")
    ax.set_ylabel("accuracy (solid test, dashed train)")
    ax.set_title(f"M={m}, seed 0: delayed generalisation above the boundary")
    ax.legend(fontsize=8, title="fraction")
    fig.tight_layout()
    ctx.savefig(fig, "grokking.png")
