"""Li₂ grokking scaling law: the memorisation/generalisation boundary at n* ∝ M log M.

Paper: Y. Tian, "Provable Scaling Laws of Feature Emergence from Learning Dynamics
of Grokking" (2025), Li₂ framework; docs/papers/grokking-scaling.md.
Command: ``lgrad run grokking-scaling --quick`` (M = 13, 17, 23, 31, five multiples,
two seeds, 3,000 epochs); ``--full`` has six moduli up to 127, eight multiples, three
seeds and the authors' 10,000 epochs.
Expected: modular addition a + b mod M with a two-layer quadratic network whose top
layer is ridge-solved at every step: with a training fraction <= 0.6 x the critical
fraction c log M / M (c = 2.7482) the network memorises (train accuracy 1, test ~0);
at >= 1.5 x it generalises (test >= 0.95); and the boundary between the two follows
c log M / M better than any constant fraction (``scaling-law-beats-constant``).

Claims changed by the fidelity review (docs/papers/grokking-scaling.md, "Before /
after"): the two old claims (0.6x / 1.5x) were also passed by any constant boundary
fraction in 0.225..0.402, so the law itself was untested. Now: four moduli, a grid
of multiples in steps of 1.2x, and the claim ``scaling-law-beats-constant`` (one-
parameter fits of c log M / M and of a constant to each M's boundary interval; it
passes only if the constant's RMS log residual exceeds the law's by >= 0.1, so a
constant boundary makes it fail). The old finding ``scaling-law-vs-constant`` (midpoint
fits on two moduli) is replaced by it. Thresholds of the old claims are unchanged.

The seeds of one (M, multiple) share shapes (the training set is a 0/1 weight over
a fixed number of gathered pairs, enough for that multiple) and are vmapped; the
multiples of one M are stepped side by side in one compiled program (cost:
docs/papers/grokking-scaling.md, "Cost"). There is one training path
(:func:`cell_program`): the run drives its step, vmapped over the seeds, with
``lgrad.train.run_loop`` (so ``lgrad run --checkpoint-every/--resume`` checkpoint
it), and a sweep cell (:func:`train_cell`) is ``lgrad.train.scan_steps`` of the same
step (gathering all M^2 pairs, since a sweep's multiples are traced), e.g.
``lgrad sweep grokking-scaling --grid modulus=23,37 --grid multiple=0.5,1,2 --seeds 2``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Choice, Float, Int
from lgrad.local import ridge_solve
from lgrad.train import run_loop, scan_steps

NAME = "grokking-scaling"
PAPER = "Tian 2025, Provable Scaling Laws of Feature Emergence from Learning Dynamics of Grokking (Li2)"
DESCRIPTION = "Modular addition with a ridge-solved top layer: memorisation below, generalisation above c*log(M)/M."
EXPECTED = "test accuracy <= 0.05 (train 1.0) at <= 0.6x critical fraction; >= 0.95 at >= 1.5x; boundary fits c*log(M)/M better than a constant."

CRITICAL_C = 2.7482  # the authors' estimator of c in n* = c M log M
CRITERIA = {
    "memorise_multiple": 0.6,  # cells at <= this multiple of the critical fraction must memorise:
    "memorise_test_acc": 0.05,  # ... test accuracy at most this (every M, seed)
    "memorise_train_acc": 1.0,  # ... and train accuracy this
    "generalise_multiple": 1.5,  # cells at >= this multiple must generalise:
    "generalised": 0.95,  # test accuracy at which a cell counts as generalised (also the boundary's)
    "law_margin": 0.1,  # the law must beat the constant fraction by this much RMS log residual (~10 % in fraction)
    "law_min_moduli": 3,  # moduli with a located boundary needed to decide the law claim
}

CONFIGS = {
    "quick": dict(
        seed=0,
        # log M / M falls 1.78x from 13 to 31 (a constant fraction does not). Tried first, 2,000 epochs:
        # M = 53 (seed 0) did not grok even at 1.5x; M = 17, 23, 31, 41 failed the law claim because
        # M = 31 and 41 were still grokking at 1.04x / 1.25x at epoch 2,000 (doc: "Before / after").
        moduli=[13, 17, 23, 31],
        multiples=[0.6, 0.86, 1.04, 1.25, 1.5],  # steps of 1.2x around the predicted boundary
        n_seeds=2,
        hidden=256,
        # 1,000 -> 2,000 (M=37 at 1.5x had test 0.06 at 1,000) -> 3,000 (M=31 at 1.04x still rising at 2,000)
        epochs=3000,
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
        multiples=[0.5, 0.6, 0.72, 0.86, 1.04, 1.25, 1.5, 2.0],
        n_seeds=3,
        hidden=256,
        epochs=10000,  # the authors' 10,000 full-batch epochs
        learning_rate=1e-2,
        weight_decay=5e-5,
        ridge=1e-3,
        init_scale=0.1,
        activation="square",
        eval_every=100,
        modulus=23,
        multiple=1.0,
        strategy="vmap",
    ),
}
SMOKE = dict(moduli=[7], multiples=[0.5, 2.0], n_seeds=1, hidden=16, epochs=20, eval_every=10, modulus=7)
LIMITS = {
    "moduli": Int(min=3, max=512),
    "multiples": Float(gt=0, max=50),
    "n_seeds": Int(min=1, max=64),
    "hidden": Int(min=1, max=65536),
    "learning_rate": Float(gt=0),
    "weight_decay": Float(min=0),
    "ridge": Float(gt=0),
    "init_scale": Float(gt=0),
    "activation": Choice("square", "relu"),
    "eval_every": Int(min=1),
    "modulus": Int(min=3, max=512),
    "multiple": Float(gt=0, max=50),
    "strategy": Choice("vmap", "sequential"),
}

ACTIVATIONS = {"square": lambda h: h * h, "relu": jax.nn.relu}


def critical_fraction(m: int, c: float = CRITICAL_C) -> float:
    """c log M / M: the training fraction at the predicted boundary n* = c M log M."""
    return c * math.log(m) / m


def modular_addition(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All M^2 pairs (a, b) and labels (a + b) mod M."""
    a, b = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    a, b = a.ravel(), b.ravel()
    return a, b, (a + b) % m


def train_rows(m: int, max_multiple: float | None) -> int:
    """Rows a cell of modulus m gathers for training: enough for ``max_multiple`` x the
    critical fraction (every pair, M^2, when ``max_multiple`` is None)."""
    n = m * m
    if max_multiple is None:
        return n
    return int(min(n, math.ceil(max_multiple * critical_fraction(m) * n) + 1))


ROW_KEYS = ("a", "b", "t", "wt")  # a cell's entries with one row per gathered pair


def make_cell(m: int, cfg: dict[str, Any], rows: int | None = None):
    """(init, step, evaluate) for one modulus; each acts on one cell and is vmapped.

    Model (docs/papers/grokking-scaling.md): h = W x with x = [onehot(a); onehot(b)] (so h = W[:, a] +
    W[:, M + b]), F = sigma(h), o = V F with V the ridge solution on the training rows
    (no gradient through it); loss = mean over training rows of
    ||o - mean(o) - (e_y - 1/M)||^2; Adam with coupled (L2) weight decay on W only.

    A cell trains on ``rows`` gathered pairs (default all M^2): the first ``rows`` of
    its random permutation, weighted 1 for the first n_train and 0 after, so cells of
    different fractions share shapes and the Gram matrix costs ``rows``, not M^2, rows.
    The training set is the same for every ``rows`` >= n_train.
    """
    if cfg["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {cfg['activation']!r}")
    sigma = ACTIVATIONS[cfg["activation"]]
    a, b, y = modular_addition(m)
    a, b, y = jnp.asarray(a), jnp.asarray(b), jnp.asarray(y)
    n = m * m
    rows = n if rows is None else rows
    targets = jax.nn.one_hot(y, m) - 1.0 / m
    tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"]), optax.adam(cfg["learning_rate"]))
    ridge = cfg["ridge"]

    def features(w, ia, ib):
        wt = w.T  # gather contiguous rows of W^T: h_n = W[:, a_n] + W[:, M + b_n]
        return sigma(wt[ia] + wt[m + ib])  # (rows, K)

    def loss(w, cell):
        f = features(w, cell["a"], cell["b"])
        o = f @ ridge_solve(f, cell["t"], ridge, weights=cell["wt"]).T  # no gradient through the solve
        r = o - o.mean(axis=1, keepdims=True) - cell["t"]
        return jnp.sum(cell["wt"] * jnp.sum(r * r, axis=1)) / jnp.sum(cell["wt"])

    def init(fraction, key):
        k_split, k_init = jax.random.split(key)
        n_train = jnp.clip(jnp.round(fraction * n), 1, n - 1).astype(jnp.int32)
        perm = jax.random.permutation(k_split, n)
        mask = (jnp.argsort(perm) < n_train).astype(jnp.float32)
        idx = perm[:rows]  # the gathered pairs, their inputs and targets (fixed during training)
        data = {"mask": mask, "a": a[idx], "b": b[idx], "t": targets[idx], "wt": (jnp.arange(rows) < n_train).astype(jnp.float32)}
        w = cfg["init_scale"] * jax.random.normal(k_init, (cfg["hidden"], 2 * m))
        return {"w": w, "opt": tx.init(w), **data}

    def step(cell):
        value, grad = jax.value_and_grad(loss)(cell["w"], cell)
        updates, opt = tx.update(grad, cell["opt"], cell["w"])
        return {**cell, "w": optax.apply_updates(cell["w"], updates), "opt": opt}, {"loss": value}

    def evaluate(cell):
        mask = cell["mask"]
        w = cell["w"]
        out = features(w, a, b) @ ridge_solve(features(w, cell["a"], cell["b"]), cell["t"], ridge, weights=cell["wt"]).T
        correct = (jnp.argmax(out, axis=1) == y).astype(jnp.float32)
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
    rows = train_rows(m, static.get("max_multiple"))  # set by the run; a sweep cell gathers all M^2 rows

    def fns(hp):
        return make_cell(m, {**static, **hp}, rows)

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


def _group_loop(m: int, cfg: dict[str, Any], ctx: RunContext, groups: list[tuple[list[int], list[int]]]):
    """One ``run_loop`` of modulus m over ``groups`` = [(multiple indices, seeds)]: each
    group gathers the rows of its largest multiple (``train_rows``) and is vmapped over
    its cells; the groups are stepped side by side in one compiled program. Returns the
    accuracy curves, (evals, multiples, seeds), and the eval steps."""
    static = {k: v for k, v in cfg.items() if k not in SWEEPABLE and k != "seed"}
    static["modulus"] = m
    mults = [[float(cfg["multiples"][i]) for i in idx for _ in seeds] for idx, seeds in groups]
    flat = [x for g in mults for x in g]
    hps = {k: jnp.full(len(flat), cfg[k]) for k in SWEEPABLE} | {"multiple": jnp.asarray(flat, jnp.float32)}
    keys = jnp.stack([jax.random.PRNGKey(cfg["seed"] + 1000 * m + s) for idx, seeds in groups for _ in idx for s in seeds])
    # Every cell initialised at once (one compilation), with the rows of the largest multiple;
    # a group keeps the first rows of its own largest multiple (the same pairs, see make_cell).
    # Jitted, as inside a sweep cell: an eager init rounds init_scale * normal differently.
    cells, hp = jax.jit(jax.vmap(cell_program({**static, "max_multiple": max(flat)})[0]))(hps, keys)
    progs, carry, start = [], [], 0
    for g in mults:
        _, step, evaluate = cell_program({**static, "max_multiple": max(g)})
        rows = train_rows(m, max(g))
        cell = jax.tree.map(lambda v: v[start: start + len(g)], cells)
        cell |= {k: cell[k][:, :rows] for k in ROW_KEYS}
        carry.append((cell, jax.tree.map(lambda v: v[start: start + len(g)], hp)))
        progs.append((jax.vmap(step), jax.vmap(evaluate)))
        start += len(g)

    def step(c):
        out = [p[0](g) for p, g in zip(progs, c)]
        return tuple(o[0] for o in out), {"loss": jnp.concatenate([o[1]["loss"] for o in out])}

    def evaluate(c):
        out = [p[1](g) for p, g in zip(progs, c)]
        return {k: jnp.concatenate([o[k] for o in out]) for k in ("train_acc", "test_acc")}

    n_cells = sum(len(i) * len(s) for i, s in groups)
    res = run_loop(step, tuple(carry), steps=cfg["epochs"], eval_fn=evaluate, eval_every=cfg["eval_every"],
                   progress=lambda total, desc: ctx.progress(total=total, desc=f"M={m} ({n_cells} cells)"))
    shape = (-1, sum(len(i) for i, _ in groups), len(groups[0][1]))
    return {k: np.asarray(v).reshape(shape) for k, v in res.evals.items()}, res.eval_steps


def train_modulus(m: int, cfg: dict[str, Any], ctx: RunContext):
    """Every (multiple, seed) cell of modulus m: one ``run_loop`` of all cells, one group
    per multiple vmapped over the seeds (``strategy="vmap"``), or one ``run_loop`` per
    cell (``"sequential"``). Returns the final accuracies and the curves, arrays of shape
    (multiples, seeds) and (evals, multiples, seeds), and the eval steps."""
    if cfg["strategy"] not in ("vmap", "sequential"):
        raise ValueError(f"strategy must be 'vmap' or 'sequential', got {cfg['strategy']!r}")
    seeds = list(range(cfg["n_seeds"]))
    if cfg["strategy"] == "vmap":
        curves, eval_steps = _group_loop(m, cfg, ctx, [([i], seeds) for i in range(len(cfg["multiples"]))])
    else:
        runs = [[_group_loop(m, cfg, ctx, [([i], [s])]) for s in seeds] for i in range(len(cfg["multiples"]))]
        eval_steps = runs[0][0][1]
        curves = {k: np.concatenate([np.concatenate([r[0][k] for r in row], axis=2) for row in runs], axis=1)
                  for k in ("train_acc", "test_acc")}
    final = {k: c[-1] for k, c in curves.items()}  # measure() checks that eval_every divides epochs
    return final, curves, eval_steps


def _boundary(multiples: np.ndarray, test: np.ndarray, crit: float, generalised: float) -> dict[str, Any]:
    """The boundary interval of one M: ``hi`` = the smallest multiple from which every
    multiple (and every seed) generalises (test >= ``generalised``), ``lo`` = the largest multiple
    below it that does not; None when not located (no generalising top / no failing
    multiple below). ``non_monotone``: multiples below ``lo`` that generalise anyway."""
    ok = np.all(test >= generalised, axis=1)
    order = np.argsort(multiples)
    hi = None
    for k in order[::-1]:
        if not ok[k]:
            break
        hi = float(multiples[k])
    below = [float(multiples[k]) for k in order if not ok[k] and (hi is None or multiples[k] < hi)]
    lo = max(below, default=None)
    mid = math.sqrt(lo * hi) if lo is not None and hi is not None else None
    return {
        "largest_failing_multiple": lo,
        "smallest_generalising_multiple": hi,
        "boundary_multiple": mid,
        "fraction_interval": [None if lo is None else lo * crit, None if hi is None else hi * crit],
        "boundary_fraction": None if mid is None else mid * crit,
        "non_monotone": [float(multiples[k]) for k in order if ok[k] and lo is not None and multiples[k] < lo],
    }


def _interval_fit(log_lo: np.ndarray, log_hi: np.ndarray, shape: np.ndarray) -> dict[str, float]:
    """Fit log b(M) = s + shape(M) to boundary intervals [log_lo, log_hi] (+-inf when open):
    residual = distance from the prediction to the interval (0 inside). Returns the
    RMS residual at the best s, that s, and the range of s with zero residual (if any)."""
    lo_s, hi_s = log_lo - shape, log_hi - shape
    finite = np.concatenate([lo_s[np.isfinite(lo_s)], hi_s[np.isfinite(hi_s)]])
    grid = np.linspace(finite.min() - 1.0, finite.max() + 1.0, 20001)
    r = np.maximum(0.0, np.maximum(lo_s[None, :] - grid[:, None], grid[:, None] - hi_s[None, :]))
    rms = np.sqrt(np.mean(r**2, axis=1))
    best = float(rms.min())
    zero = grid[rms <= 1e-12]
    s = float(np.mean(zero)) if zero.size else float(grid[int(np.argmin(rms))])
    return {"rms": best, "s": s, "zero_range": [float(zero.min()), float(zero.max())] if zero.size else None}


def _compare_hypotheses(boundaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """c log M / M against a constant fraction, each with one fitted parameter, on the
    boundary intervals of every M with at least one located end (RMS log residual)."""
    ms = [m for m, b in boundaries.items() if any(v is not None for v in b["fraction_interval"])]
    if len(ms) < 2:
        return {"moduli": ms, "note": "fewer than two moduli with a located boundary end: no comparison"}
    ends = [boundaries[m]["fraction_interval"] for m in ms]
    lo = np.array([-np.inf if a is None else math.log(a) for a, _ in ends])
    hi = np.array([np.inf if b is None else math.log(b) for _, b in ends])
    law = _interval_fit(lo, hi, np.log([math.log(m) / m for m in ms]))
    const = _interval_fit(lo, hi, np.zeros(len(ms)))
    rng = lambda z: None if z is None else [float(np.exp(z[0])), float(np.exp(z[1]))]  # noqa: E731
    return {
        "moduli": ms,
        "fitted_c_logM_over_M": float(np.exp(law["s"])),
        "c_range_fitting_every_M": rng(law["zero_range"]),
        "fitted_constant_fraction": float(np.exp(const["s"])),
        "constant_range_fitting_every_M": rng(const["zero_range"]),
        "rms_log_residual_scaling_law": law["rms"],
        "rms_log_residual_constant": const["rms"],
        "advantage_of_law": const["rms"] - law["rms"],
    }


def _analyse(finals: dict[int, dict[str, np.ndarray]], multiples: np.ndarray) -> tuple[dict, dict]:
    """The boundary interval of every M and the comparison of the two hypotheses."""
    boundaries = {m: _boundary(multiples, f["test_acc"], critical_fraction(m), CRITERIA["generalised"]) for m, f in finals.items()}
    return boundaries, _compare_hypotheses(boundaries)


def _finals(measurements: dict[str, Any]) -> dict[int, dict[str, np.ndarray]]:
    """The final accuracies by M, (multiples, seeds) arrays. They were measured in
    float32 and are compared in float32, as in training (exact: JSON keeps their value)."""
    return {int(m): {k: np.asarray(v, np.float32) for k, v in f.items()} for m, f in measurements["finals"].items()}


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    c = CRITERIA
    multiples = np.asarray(config["multiples"], np.float64)
    finals = _finals(measurements)
    boundaries, comparison = _analyse(finals, multiples)
    low, high = multiples <= c["memorise_multiple"] + 1e-9, multiples >= c["generalise_multiple"] - 1e-9
    low_test = max(float(finals[m]["test_acc"][low].max()) for m in finals) if low.any() else float("nan")
    low_train = min(float(finals[m]["train_acc"][low].min()) for m in finals) if low.any() else float("nan")
    high_acc = np.concatenate([finals[m]["test_acc"][high].ravel() for m in finals]) if high.any() else np.array([np.nan])
    n_mod = len(comparison["moduli"])
    adv = comparison.get("advantage_of_law", float("nan"))
    decided = n_mod >= c["law_min_moduli"] and np.isfinite(adv)
    return [
        Claim.holds(
            "memorise-below",
            f"at <= {c['memorise_multiple']:g}x the critical fraction the network memorises: train accuracy "
            f"{c['memorise_train_acc']}, test accuracy <= {c['memorise_test_acc']:g}",
            {"max_test_acc": low_test, "min_train_acc": low_train},
            f"max test <= {c['memorise_test_acc']:g} and min train == {c['memorise_train_acc']} over all M, seeds, "
            f"multiples <= {c['memorise_multiple']:g}",
            low_test <= c["memorise_test_acc"] and low_train >= c["memorise_train_acc"],
        ),
        Claim.at_least(
            "generalise-above",
            f"at >= {c['generalise_multiple']:g}x the critical fraction the network generalises (min test accuracy over M and seeds)",
            float(np.min(high_acc)),
            c["generalised"],
            note=f"threshold on the minimum over {high_acc.size} cells (every M and seed); mean {float(np.mean(high_acc)):.3f}",
        ),
        Claim.holds(
            "scaling-law-beats-constant",
            "the boundary fraction follows c log M / M (n* = c M log M), not a constant fraction: "
            "one-parameter fits to the per-M boundary intervals, RMS log residual",
            comparison,
            f">= {c['law_min_moduli']} moduli and rms(constant) - rms(c log M / M) >= {c['law_margin']}",
            bool(decided and adv >= c["law_margin"]),
            note="" if n_mod >= c["law_min_moduli"] else f"only {n_mod} moduli with a located boundary: not decided",
        ),
        Claim.finding(
            "boundary-per-M",
            f"boundary interval per M (multiples of c log M / M, c = {CRITICAL_C}): largest failing and smallest "
            f"generalising multiple (every seed test >= {c['generalised']:g})",
            {str(m): b for m, b in boundaries.items()},
        ),
    ]


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    cfg = dict(config)
    if cfg["n_seeds"] < 1 or cfg["epochs"] < 1 or not cfg["moduli"] or not cfg["multiples"]:
        raise ValueError("n_seeds, epochs, moduli and multiples must be non-empty / positive")
    if cfg["eval_every"] < 1 or cfg["epochs"] % cfg["eval_every"]:
        raise ValueError("eval_every must be >= 1 and divide epochs")
    multiples = np.asarray(cfg["multiples"], np.float64)
    finals, curves = {}, {}
    for m in cfg["moduli"]:
        finals[m], curves[m], eval_steps = train_modulus(m, cfg, ctx)
        _log_modulus(ctx, m, multiples, cfg["n_seeds"], finals[m], curves[m], eval_steps)
    boundaries, comparison = _analyse(finals, multiples)
    ctx.log("boundary", boundaries=boundaries, comparison=comparison)
    _plot(ctx, cfg, finals, curves, eval_steps, boundaries, comparison)
    return {"finals": {str(m): f for m, f in finals.items()}}


def _log_modulus(ctx: RunContext, m: int, multiples: np.ndarray, n_seeds: int, final, curve, eval_steps) -> None:
    crit = critical_fraction(m)
    for i, mult in enumerate(multiples):
        for s in range(n_seeds):
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


def _plot(ctx: RunContext, cfg, finals, curves, eval_steps, boundaries, comparison) -> None:
    import matplotlib.pyplot as plt

    moduli = list(finals)
    multiples = cfg["multiples"]
    heat = np.array([finals[m]["test_acc"].mean(axis=1) for m in moduli])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), gridspec_kw={"width_ratios": [1.1, 1, 1.1]})
    ax = axes[0]
    im = ax.imshow(heat, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(multiples)), [f"{x:g}x" for x in multiples])
    ax.set_yticks(range(len(moduli)), [str(m) for m in moduli])
    for i in range(heat.shape[0]):
        for j in range(heat.shape[1]):
            ax.text(j, i, f"{heat[i, j]:.2f}", ha="center", va="center", color="w" if heat[i, j] < 0.5 else "k", fontsize=8)
    ax.set_xlabel("training fraction / (c log M / M), c = 2.7482")
    ax.set_ylabel("M")
    ax.set_title(f"final test accuracy (mean over {cfg['n_seeds']} seeds)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _plot_boundaries(axes[1], moduli, boundaries, comparison)
    ax = axes[2]
    m = moduli[-1]
    for j, mult in enumerate(multiples):
        color = plt.cm.plasma(j / max(1, len(multiples) - 1))
        ax.plot(eval_steps, curves[m]["train_acc"][:, j, 0], ls="--", color=color, lw=1)
        ax.plot(eval_steps, curves[m]["test_acc"][:, j, 0], color=color, lw=1.6, label=f"{mult:g}x")
    ax.set_xlabel("epoch (full batch)")
    ax.set_ylabel("accuracy (solid test, dashed train)")
    ax.set_title(f"M={m}, seed 0")
    ax.legend(fontsize=8, title="multiple")
    fig.tight_layout()
    ctx.savefig(fig, "grokking.png")


def _plot_boundaries(ax, moduli, boundaries, comparison) -> None:
    """Per-M boundary intervals of the training fraction with both fitted hypotheses."""
    grid = np.linspace(min(moduli) * 0.9, max(moduli) * 1.1, 100)
    for m in moduli:
        lo, hi = boundaries[m]["fraction_interval"]
        y0, y1 = (lo if lo is not None else 0.02), (hi if hi is not None else 1.0)
        ax.plot([m, m], [y0, y1], color="k", lw=3, solid_capstyle="butt")
        ax.plot([m], [y0], marker="v" if lo is None else "_", color="k", ms=10)
        ax.plot([m], [y1], marker="^" if hi is None else "_", color="k", ms=10)
    ax.plot(grid, CRITICAL_C * np.log(grid) / grid, color="C0", ls=":", label=f"paper: {CRITICAL_C} log M / M")
    if "fitted_c_logM_over_M" in comparison:
        c, f = comparison["fitted_c_logM_over_M"], comparison["fitted_constant_fraction"]
        ax.plot(grid, c * np.log(grid) / grid, color="C0", label=f"fit {c:.2f} log M / M (rms {comparison['rms_log_residual_scaling_law']:.3f})")
        ax.plot(grid, np.full_like(grid, f), color="C3", label=f"fit constant {f:.3f} (rms {comparison['rms_log_residual_constant']:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("M")
    ax.set_ylabel("training fraction")
    ax.set_title("boundary interval per M (fails below, all seeds generalise above)")
    ax.legend(fontsize=7)
