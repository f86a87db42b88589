"""diffGrad on the paper's three synthetic 1-D functions (PAPERS.md B1).

Paper: Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural
Networks", IEEE TNNLS 2019, Section IV-A (Figs. 3-5).
Command: ``lgrad run diffgrad-synthetic --quick`` (the full config adds start points).
Expected: from x0 = -1 with eta 0.1, beta1 0.95, 300 steps, diffGrad ends in the
global minimum of F1 (-0.3) and F2 (~ -0.643) where Adam stops in the local one
(0.2 and 0.0); the implementation matches a numpy reference to 1e-6.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.engine import Claim, RunContext, fit
from lgrad.optim import diffgrad
from lgrad.testing import diffgrad_reference

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


# --- the three functions of Section IV-A ---------------------------------------
def f1(x):
    """(x + 0.3)^2 for x <= 0, (x - 0.2)^2 + 0.05 for x > 0. Global -0.3, local 0.2."""
    return jnp.where(x <= 0, (x + 0.3) ** 2, (x - 0.2) ** 2 + 0.05)


def f2(x):
    """-40x - 35.15 for x <= -0.9, x^3 + x sin(8x) + 0.85 otherwise (PAPERS.md: form unverified)."""
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


def _optimizers(cfg: dict[str, Any]) -> dict[str, optax.GradientTransformation]:
    lr, b1, b2, eps = cfg["learning_rate"], cfg["b1"], cfg["b2"], cfg["eps"]
    return {
        "Adam": optax.adam(lr, b1=b1, b2=b2, eps=eps),
        "diffGrad": diffgrad(lr, b1=b1, b2=b2, eps=eps),
        "diffGrad xi=0.5": diffgrad(lr, b1=b1, b2=b2, eps=eps, constant_friction=True),
    }


def run(config: dict[str, Any], ctx: RunContext) -> list[Claim]:
    with jax.enable_x64(True):
        return _run(config, ctx)


def _run(cfg: dict[str, Any], ctx: RunContext) -> list[Claim]:
    steps = cfg["steps"]
    opts = _optimizers(cfg)
    x0 = jnp.asarray(cfg["x0"], jnp.float64)
    finals: dict[str, dict[str, float]] = {}
    trajectories: dict[str, dict[str, np.ndarray]] = {}
    ref_err = 0.0
    for fname, (fn, _, _) in ctx.progress(FUNCTIONS.items(), total=len(FUNCTIONS), desc="functions"):
        finals[fname], trajectories[fname] = {}, {}
        for oname, tx in opts.items():
            res = fit(lambda p, _: fn(p), x0, tx, steps=steps, record_params=True)
            xs = np.asarray(res.history["params"])
            trajectories[fname][oname] = xs
            finals[fname][oname] = float(xs[-1])
            ctx.log_history(f"{fname}/{oname}", {"x": xs, "f": np.asarray(res.history["loss"])})
        # The lgrad transform against the plain numpy reference, same gradients.
        grad = jax.jit(jax.grad(fn))
        for friction in (False, True):
            ref = diffgrad_reference(
                lambda x: np.asarray(grad(jnp.asarray(x[0])))[None],
                np.array([cfg["x0"]]),
                steps,
                learning_rate=cfg["learning_rate"],
                b1=cfg["b1"],
                b2=cfg["b2"],
                eps=cfg["eps"],
                constant_friction=friction,
            )[:, 0]
            ours = trajectories[fname]["diffGrad xi=0.5" if friction else "diffGrad"]
            ref_err = max(ref_err, float(np.max(np.abs(ours - ref))))

    # Robustness finding: fraction of start points in [low, high] that end within 0.01 of the global minimum.
    starts = jnp.linspace(cfg["start_low"], cfg["start_high"], cfg["n_starts"], dtype=jnp.float64)
    reach: dict[str, dict[str, float]] = {}
    for fname, (fn, xstar, _) in FUNCTIONS.items():
        reach[fname] = {}
        for oname, tx in opts.items():
            end = np.asarray(jax.jit(jax.vmap(lambda x0, fn=fn, tx=tx: _descend(fn, tx, x0, steps)))(starts))
            reach[fname][oname] = float(np.mean(np.abs(end - xstar) <= 0.01))

    _plot(ctx, trajectories, finals)
    ctx.log("summary", finals=finals, reach_global_fraction=reach, reference_max_abs_error=ref_err)

    f1_d, f2_d = finals["F1"]["diffGrad"], finals["F2"]["diffGrad"]
    f1_c, f2_c = finals["F1"]["diffGrad xi=0.5"], finals["F2"]["diffGrad xi=0.5"]
    return [
        Claim.at_most(
            "numpy-reference",
            "lgrad's diffgrad (and its xi=0.5 variant) equals a plain numpy implementation of Algorithm 1 over all steps",
            ref_err,
            1e-6,
            note="max |x_lgrad - x_numpy| over F1-F3, float64, both friction variants",
        ),
        Claim.within("F1-diffgrad-global", "diffGrad from x0=-1 ends in F1's global minimum x=-0.3", f1_d, -0.3, 0.01),
        Claim.within("F2-diffgrad-global", "diffGrad from x0=-1 ends in F2's global minimum x~-0.643", f2_d, -0.643, 0.01),
        Claim.within(
            "F1-adam-local", "Adam from x0=-1 stops in F1's local minimum x=0.2", finals["F1"]["Adam"], 0.2, 0.01
        ),
        Claim.within(
            "F2-adam-local", "Adam from x0=-1 stops in F2's local minimum x=0.0", finals["F2"]["Adam"], 0.0, 0.01
        ),
        Claim.holds(
            "constant-friction-reaches-both",
            "the authors' first code (xi = 0.5) also reaches both global minima",
            {"F1": f1_c, "F2": f2_c},
            "F1 within 0.01 of -0.3 and F2 within 0.01 of -0.643",
            abs(f1_c + 0.3) <= 0.01 and abs(f2_c + 0.643) <= 0.01,
        ),
        Claim.finding(
            "F3-endpoints",
            "end points on F3 (global minimum 0, local minima at +-0.5); the paper shows diffGrad closer to 0",
            finals["F3"],
        ),
        Claim.finding(
            "global-reach-fraction",
            f"fraction of {cfg['n_starts']} starts in [{cfg['start_low']}, {cfg['start_high']}] ending within 0.01 of the global minimum",
            reach,
        ),
    ]


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
# The numeric keys below travel as traced arrays (optimizer settings in
# optax.inject_hyperparams state), so configurations that share `steps` and
# `n_starts` run as one vmapped, compiled program; see lgrad.sweep.
SWEEPABLE = ("learning_rate", "b1", "b2", "eps", "x0", "start_low", "start_high")
SWEEP_METRIC = ("diffgrad_gap", "min")
SWEEP_X64 = True


def _descend(fn, tx, x0, steps):
    def step(carry, _):
        x, s = carry
        u, s = tx.update(jax.grad(fn)(x), s, x)
        return (optax.apply_updates(x, u), s), None

    (x, _), _ = jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps)
    return x


def train_cell(static: dict[str, Any], hp: dict[str, Any], key: jax.Array) -> dict[str, jax.Array]:
    """One sweep cell: end points of Adam / diffGrad / xi=0.5 from ``x0`` on F1-F3, the
    fraction of the ``n_starts`` starts diffGrad brings to each global minimum, and
    ``diffgrad_gap`` = max(|x_F1 + 0.3|, |x_F2 + 0.643|) for diffGrad (0 is perfect).
    Deterministic: ``key`` is unused."""
    del key
    opt = dict(learning_rate=hp["learning_rate"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
    txs = {
        "Adam": optax.inject_hyperparams(optax.adam)(**opt),
        "diffGrad": optax.inject_hyperparams(diffgrad)(**opt),
        "diffGrad xi=0.5": optax.inject_hyperparams(diffgrad, static_args=("constant_friction",))(**opt, constant_friction=True),
    }
    x0 = jnp.asarray(hp["x0"])
    starts = jnp.linspace(hp["start_low"], hp["start_high"], static["n_starts"])
    metrics: dict[str, jax.Array] = {}
    for fname, (fn, xstar, _) in FUNCTIONS.items():
        for oname, tx in txs.items():
            metrics[f"{fname}/{oname}"] = _descend(fn, tx, x0, static["steps"])
        ends = jax.vmap(lambda s, fn=fn: _descend(fn, txs["diffGrad"], s, static["steps"]))(starts)
        metrics[f"{fname}/diffGrad/reach"] = jnp.mean((jnp.abs(ends - xstar) <= 0.01).astype(x0.dtype))
    metrics["diffgrad_gap"] = jnp.maximum(jnp.abs(metrics["F1/diffGrad"] + 0.3), jnp.abs(metrics["F2/diffGrad"] + 0.643))
    return metrics


def sweep_claims(config: dict[str, Any], m: dict[str, float]) -> list[Claim]:
    """The paper's end-point claims, checked for one sweep cell."""
    return [
        Claim.within("F1-diffgrad-global", "diffGrad ends in F1's global minimum x=-0.3", m["F1/diffGrad"], -0.3, 0.01),
        Claim.within("F2-diffgrad-global", "diffGrad ends in F2's global minimum x~-0.643", m["F2/diffGrad"], -0.643, 0.01),
        Claim.within("F1-adam-local", "Adam stops in F1's local minimum x=0.2", m["F1/Adam"], 0.2, 0.01),
        Claim.within("F2-adam-local", "Adam stops in F2's local minimum x=0.0", m["F2/Adam"], 0.0, 0.01),
    ]
