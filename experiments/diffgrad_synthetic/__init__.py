"""diffGrad on the paper's three synthetic 1-D functions (docs/papers/diffgrad-synthetic.md).

Paper: Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural
Networks", IEEE TNNLS 2019, Section IV-A (Figs. 3-5).
Command: ``lgrad run diffgrad-synthetic --quick`` (the full config adds start points).
Expected: from x0 = -1 with eta 0.1, beta1 0.95, 300 steps, diffGrad ends in the
global minimum of F1 (-0.3) and F2 (~ -0.643) where Adam stops in the local one
(0.2 and 0.0); the implementation matches a numpy reference to 1e-6.

One training path: :func:`descents` builds every descent of a configuration; the
run (:func:`measure`) drives them with ``lgrad.train.run_loop`` (checkpointable with ``lgrad run
--checkpoint-every``), a sweep cell (:func:`train_cell`, vmapped by ``lgrad sweep``)
with ``lgrad.train.scan_steps``, and both report through :func:`claims_of`. Before
this the sweep cell had its own descent loop and claims; the move to one path left
every claim value of the quick run unchanged (bit for bit, metrics.jsonl included).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.engine import Claim, RunContext
from lgrad.optim import diffgrad
from lgrad.testing import diffgrad_reference
from lgrad.train import TrainState, gradient_step, run_loop, scan_steps

NAME = "diffgrad-synthetic"
PAPER = "Dubey et al. 2019, diffGrad: An Optimization Method for Convolutional Neural Networks (TNNLS)"
DESCRIPTION = "Adam vs diffGrad vs the xi=0.5 variant on the paper's three synthetic functions."
EXPECTED = "diffGrad reaches the global minima of F1 (-0.3) and F2 (-0.643); Adam stops at 0.2 and 0.0."

_COMMON = dict(seed=0, steps=300, learning_rate=0.1, b1=0.95, b2=0.999, eps=1e-8, x0=-1.0, start_low=-1.0, start_high=1.0)
CONFIGS = {
    "quick": dict(_COMMON, n_starts=21),
    "full": dict(_COMMON, n_starts=401),
}
SMOKE = dict(steps=12, n_starts=3)
X64 = True  # float64 throughout (the engine runs `measure`, and lgrad.sweep traces `train_cell`, under jax.enable_x64)
CRITERIA = {
    "endpoint_tolerance": 0.01,  # |x_end - minimiser| for "ends in the minimum" (and the reach fractions)
    "reference_error": 1e-6,  # max |x_lgrad - x_numpy| over every step of F1-F3, both friction variants
}
OPTIMIZERS = ("Adam", "diffGrad", "diffGrad xi=0.5")


# --- the three functions of Section IV-A ---------------------------------------
def f1(x):
    """(x + 0.3)^2 for x <= 0, (x - 0.2)^2 + 0.05 for x > 0. Global -0.3, local 0.2."""
    return jnp.where(x <= 0, (x + 0.3) ** 2, (x - 0.2) ** 2 + 0.05)


def f2(x):
    """-40x - 35.15 for x <= -0.9, x^3 + x sin(8x) + 0.85 otherwise (form unverified: docs/papers/diffgrad-synthetic.md)."""
    return jnp.where(x <= -0.9, -40.0 * x - 35.15, x**3 + x * jnp.sin(8.0 * x) + 0.85)


def f3(x):
    """x^2 for |x| >= 0.5 with a V-shaped well of linear pieces on (-0.5, 0.5). Global 0."""
    return jnp.select(
        [x <= -0.5, x <= -0.4, x <= 0.0, x <= 0.4, x <= 0.5],
        [x**2, 0.75 + x, -7.0 * x / 8.0, 7.0 * x / 8.0, 0.75 - x],
        x**2,
    )


FUNCTIONS: dict[str, tuple[Callable, float, float | None]] = {
    # name: (function, global minimiser, the local minimiser Adam is reported to reach)
    "F1": (f1, -0.3, 0.2),
    "F2": (f2, -0.643, 0.0),
    "F3": (f3, 0.0, None),
}


def _optimizers(hp: dict[str, Any]) -> dict[str, optax.GradientTransformation]:
    """The three rules; ``hp`` values are Python floats (a run) or traced scalars (a sweep cell)."""
    opt = dict(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
    rules = (optax.adam(hp["learning_rate"], **opt), diffgrad(hp["learning_rate"], **opt),
             diffgrad(hp["learning_rate"], **opt, constant_friction=True))
    return dict(zip(OPTIMIZERS, rules))


def descents(static: dict[str, Any], hp: dict[str, Any]) -> dict[str, tuple[Any, Callable]]:
    """The single training path of one configuration: ``{name: (carry, step)}``.

    For every function F and rule R, ``"F/R"`` is the descent from ``x0`` (step
    metrics: ``params`` after and ``loss`` before the step) and ``"F/R/starts"`` the descents
    from ``n_starts`` points spread over ``[start_low, start_high]`` (vmapped). The
    main run drives each with :func:`lgrad.train.run_loop` (checkpointable), a sweep
    cell with :func:`lgrad.train.scan_steps` (:func:`train_cell`); :func:`summary`
    turns the end points into metrics. Each descent is its own loop with the step of
    :func:`lgrad.train.fit` (the carry a ``TrainState``): a hand-written step, or all
    descents in one step, moved trajectories by an ulp (XLA compiles them differently).
    """
    txs = _optimizers(hp)
    x0 = jnp.asarray(hp["x0"])
    starts = jnp.linspace(hp["start_low"], hp["start_high"], static["n_starts"])
    out: dict[str, tuple[Any, Callable]] = {}
    for fname, (fn, _, _) in FUNCTIONS.items():
        for oname, tx in txs.items():
            tx = optax.with_extra_args_support(tx)
            step = gradient_step(lambda p, _, fn=fn: fn(p), tx, record_params=True)

            def init(x, tx=tx):
                return TrainState(x, tx.init(x), jax.random.PRNGKey(0), jnp.zeros([], jnp.int32))

            out[f"{fname}/{oname}"] = (init(x0), step)
            out[f"{fname}/{oname}/starts"] = (jax.vmap(init)(starts), jax.vmap(step))
    return out


def summary(ends: dict[str, Any], xp: Any = jnp) -> dict[str, Any]:
    """Metrics from the end points ``{name: x}`` of :func:`descents` (``xp``: jnp or numpy):
    ``"F/R"`` the end point from ``x0``, ``"F/R/reach"`` the fraction of starts ending
    within ``CRITERIA["endpoint_tolerance"]`` of F's global minimum, ``diffgrad_gap`` =
    max(|x_F1 + 0.3|, |x_F2 + 0.643|)."""
    metrics = {}
    for name, x in ends.items():
        if name.endswith("/starts"):
            xstar = FUNCTIONS[name.split("/")[0]][1]
            metrics[name.replace("/starts", "/reach")] = xp.mean(xp.abs(x - xstar) <= CRITERIA["endpoint_tolerance"])
        else:
            metrics[name] = x
    metrics["diffgrad_gap"] = xp.maximum(xp.abs(metrics["F1/diffGrad"] + 0.3), xp.abs(metrics["F2/diffGrad"] + 0.643))
    return metrics


def claims_of(config: dict[str, Any], m: dict[str, Any]) -> list[Claim]:
    """The paper's end-point claims from one configuration's metrics (a run or a sweep cell)."""
    x0, tol = f"{config['x0']:g}", CRITERIA["endpoint_tolerance"]
    f1_c, f2_c = float(m["F1/diffGrad xi=0.5"]), float(m["F2/diffGrad xi=0.5"])
    return [
        Claim.within("F1-diffgrad-global", f"diffGrad from x0={x0} ends in F1's global minimum x=-0.3", float(m["F1/diffGrad"]), -0.3, tol),
        Claim.within("F2-diffgrad-global", f"diffGrad from x0={x0} ends in F2's global minimum x~-0.643", float(m["F2/diffGrad"]), -0.643, tol),
        Claim.within("F1-adam-local", f"Adam from x0={x0} stops in F1's local minimum x=0.2", float(m["F1/Adam"]), 0.2, tol),
        Claim.within("F2-adam-local", f"Adam from x0={x0} stops in F2's local minimum x=0.0", float(m["F2/Adam"]), 0.0, tol),
        Claim.holds(
            "constant-friction-reaches-both",
            "the authors' first code (xi = 0.5) also reaches both global minima",
            {"F1": f1_c, "F2": f2_c},
            f"F1 within {tol:g} of -0.3 and F2 within {tol:g} of -0.643",
            abs(f1_c + 0.3) <= tol and abs(f2_c + 0.643) <= tol,
        ),
    ]


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """``metrics``: :func:`summary` of every descent's end point; ``reference_error``:
    the largest gap to the numpy reference over all steps (:func:`_reference_error`)."""
    cfg = dict(config)
    static = {k: v for k, v in cfg.items() if k not in SWEEPABLE and k != "seed"}
    loops = descents(static, {k: cfg[k] for k in SWEEPABLE})
    ends, trajectories = {}, {f: {} for f in FUNCTIONS}
    for name, (carry, step) in ctx.progress(loops.items(), total=len(loops), desc="descents"):
        res = run_loop(step, carry, steps=cfg["steps"])
        ends[name] = np.asarray(res.params)
        if not name.endswith("/starts"):
            fname, oname = name.split("/", 1)
            trajectories[fname][oname] = np.asarray(res.history["params"])
            ctx.log_history(name, {"x": res.history["params"], "f": res.history["loss"]})
    metrics = {k: float(v) for k, v in summary(ends, np).items()}
    finals, reach = _tables(metrics)
    ref_err = _reference_error(cfg, trajectories)
    _plot(ctx, trajectories, finals)
    ctx.log("summary", finals=finals, reach_global_fraction=reach, reference_max_abs_error=ref_err)
    return {"metrics": metrics, "reference_error": ref_err}


def _tables(metrics: dict[str, float]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """End points from x0 and reach fractions as ``{function: {rule: value}}``."""
    finals = {f: {o: metrics[f"{f}/{o}"] for o in OPTIMIZERS} for f in FUNCTIONS}
    reach = {f: {o: metrics[f"{f}/{o}/reach"] for o in OPTIMIZERS} for f in FUNCTIONS}
    return finals, reach


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The claims from the end-point metrics, the reference gap and ``CRITERIA``."""
    cfg, metrics = config, measurements["metrics"]
    finals, reach = _tables(metrics)
    return [
        Claim.at_most(
            "numpy-reference",
            "lgrad's diffgrad (and its xi=0.5 variant) equals a plain numpy implementation of Algorithm 1 over all steps",
            measurements["reference_error"],
            CRITERIA["reference_error"],
            note="max |x_lgrad - x_numpy| over F1-F3, float64, both friction variants",
        ),
        *claims_of(cfg, metrics),
        Claim.finding(
            "F3-endpoints",
            "end points on F3 (global minimum 0, local minima at +-0.5); the paper shows diffGrad closer to 0",
            finals["F3"],
        ),
        Claim.finding(
            "global-reach-fraction",
            f"fraction of {cfg['n_starts']} starts in [{cfg['start_low']}, {cfg['start_high']}] ending within "
            f"{CRITERIA['endpoint_tolerance']:g} of the global minimum",
            reach,
        ),
    ]


def _reference_error(cfg: dict[str, Any], trajectories: dict[str, dict[str, np.ndarray]]) -> float:
    """Largest gap between lgrad's diffGrad trajectories and the numpy reference, same gradients."""
    err = 0.0
    for fname, (fn, _, _) in FUNCTIONS.items():
        grad = jax.jit(jax.grad(fn))
        for friction in (False, True):
            ref = diffgrad_reference(
                lambda x: np.asarray(grad(jnp.asarray(x[0])))[None],
                np.array([cfg["x0"]]),
                cfg["steps"],
                learning_rate=cfg["learning_rate"],
                b1=cfg["b1"],
                b2=cfg["b2"],
                eps=cfg["eps"],
                constant_friction=friction,
            )[:, 0]
            ours = trajectories[fname]["diffGrad xi=0.5" if friction else "diffGrad"]
            err = max(err, float(np.max(np.abs(ours - ref))))
    return err


def _plot(ctx: RunContext, trajectories, finals) -> None:
    import matplotlib.pyplot as plt

    colors = {"Adam": "tab:blue", "diffGrad": "tab:red", "diffGrad xi=0.5": "tab:green"}
    fig, axes = plt.subplots(3, 2, figsize=(11, 9.5))
    grid = np.linspace(-1.2, 1.0, 2000)
    for row, (fname, (fn, xstar, xlocal)) in enumerate(FUNCTIONS.items()):
        ax_f, ax_t = axes[row]
        ax_f.plot(grid, np.asarray(fn(jnp.asarray(grid))), color="0.3", lw=1.2)
        for oname, x_end in finals[fname].items():
            ax_f.plot([x_end], [float(fn(jnp.asarray(x_end)))], "o", color=colors[oname], ms=8, alpha=0.8, label=f"{oname}: {x_end:+.3f}")
        ax_f.axvline(xstar, color="k", ls=":", lw=0.8)
        ax_f.set_title(f"{fname}: end points (global min at {xstar:g})")
        ax_f.set_xlabel("x")
        ax_f.legend(fontsize=8)
        for oname, xs in trajectories[fname].items():
            ax_t.plot(np.arange(1, len(xs) + 1), xs, color=colors[oname], label=oname, lw=1.3)
        ax_t.axhline(xstar, color="k", ls=":", lw=0.8, label="global min")
        if xlocal is not None:
            ax_t.axhline(xlocal, color="0.5", ls="--", lw=0.8, label="local min")
        ax_t.set_title(f"{fname}: x_t from x0=-1")
        ax_t.set_xlabel("iteration")
        ax_t.legend(fontsize=8)
    fig.suptitle("diffGrad vs Adam on the synthetic functions (eta 0.1, beta1 0.95, beta2 0.999)")
    fig.tight_layout()
    ctx.savefig(fig, "trajectories.png")


# --- batched sweeps (`lgrad sweep diffgrad-synthetic --grid learning_rate=... --grid b1=...`) ----
# The numeric keys below travel as traced scalars (the optimizers are built inside
# the traced cell), so configurations that share `steps` and `n_starts` run as one
# vmapped, compiled program; see lgrad.sweep.
SWEEPABLE = ("learning_rate", "b1", "b2", "eps", "x0", "start_low", "start_high")
SWEEP_METRIC = ("diffgrad_gap", "min")


def train_cell(static: dict[str, Any], hp: dict[str, Any], key: jax.Array) -> dict[str, jax.Array]:
    """One sweep cell, the same training path as :func:`measure`: end points of Adam /
    diffGrad / xi=0.5 from ``x0`` on F1-F3 (``"F1/Adam"``, ...), the fraction of the
    ``n_starts`` starts each brings to the global minimum (``"F1/Adam/reach"``, ...) and
    ``diffgrad_gap`` = max(|x_F1 + 0.3|, |x_F2 + 0.643|) for diffGrad (0 is perfect).
    Deterministic: ``key`` is unused."""
    del key
    ends = {name: scan_steps(step, carry, static["steps"])[0].params for name, (carry, step) in descents(static, hp).items()}
    return summary(ends)


sweep_claims = claims_of
