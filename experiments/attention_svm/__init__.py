"""Attention's implicit bias toward the Att-SVM solution (docs/papers/attention-svm.md).

Paper: D. A. Tarzanagh, Y. Li, C. Thrampoulidis, S. Oymak, "Transformers as Support
Vector Machines", arXiv:2308.16898 (2023): Theorems 2-5 and the "local convergence"
experiment (n=6, T=8, d=10; their Fig. 2-style correlation curves) and the
over-parameterisation discussion (Section 4, global convergence as d grows).
Command: ``lgrad run attention-svm --quick`` (100 seeds, the authors' number of runs;
``--full`` for 400 seeds and more values of d).
Expected: normalised GD on W aligns with the Frobenius Att-SVM of the tokens it
selects (mean correlation >= 0.99 at iteration 1000) and GD on (K, Q) with the
nuclear-norm Att-SVM (>= 0.98 at 1500); each is >= 0.05 less aligned with the other
norm's SVM (cross-norm ~0.87). A second figure reports how often GD reaches the
globally optimal tokens as d grows with n, T fixed.

Protocol (the authors' local_converge notebook, re-implemented in JAX): every seed
draws its own data set and initialisation; both parameterisations train side by side
in one jitted ``lax.scan`` (``lgrad.train.run_loop``), vmapped over seeds, in
float64, with W <- W - 0.1 g/(|g|_F + eps) (``optax.normalize_by_update_norm``; K
and Q normalised separately; lambda = 2.22e-16 on (K, Q)). The SVM tokens are the
largest-softmax tokens at the last iteration; the correlations are taken at every
``eval_every`` iterations against those SVM solutions (cvxpy + Clarabel; the
Frobenius one is polished to machine precision).

Measured (quick, 100 seeds): corr(W, W_fro) at 1000 mean 0.992 (std 0.020, median 0.996,
10th percentile 0.992, worst seed 0.81, 7 seeds below 0.99: seeds whose selected tokens
still change after iteration 1000 converge late; at iteration 2000 the worst seed is at
0.983), corr(K^T Q, W_nuc) at 1500 mean 0.996 (std 0.003, worst 0.979), cross-norm
controls ~0.85; the share of problems whose GD tokens are the global ones rises with d
(n=6, T=8), see overparam_global.png. A 20-seed mean depends on the draw (0.9945 with
``--set seeds=20``, 0.981 for another draw tried during development).

Claims and spread (issue "fidelity", docs/papers/attention-svm.md): every correlation
claim is a mean over seeds with its spread (std, median, 10th percentile, worst seed,
share below 0.99) in ``measured``; the thresholds (``CRITERIA``) apply to the mean, as
the paper's evidence is mean curves over its runs (its theorems give per-run convergence
only as iterations grow, so a late seed is not a counterexample). Before this change the
same numbers were reported as a bare mean with the spread in the note; the verdicts did
not change.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lgrad.analysis import attention_svm as asvm
from lgrad.data import normal_rows
from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Float, Int

NAME = "attention-svm"
PAPER = "Tarzanagh, Li, Thrampoulidis, Oymak 2023, Transformers as Support Vector Machines (arXiv:2308.16898)"
DESCRIPTION = "Normalised GD on 1-layer attention: W -> Frobenius Att-SVM, (K,Q) -> nuclear Att-SVM; global tokens vs d."
EXPECTED = "mean corr(W, W_fro) >= 0.99 at it. 1000; mean corr(K^T Q, W_nuc) >= 0.98 at it. 1500; own norm >= 0.05 closer."
# The claims' thresholds (applied to the mean over seeds; the spread is reported beside it).
CRITERIA = {"W-fro-svm": 0.99, "KQ-nuc-svm": 0.98, "prefers-own-norm": 0.05, "svm-constraints": 1 - 1e-6}
X64 = True  # the engine runs measure under jax.enable_x64 (float64 throughout)

_COMMON = dict(
    seed=0,
    n=6,
    T=8,
    d=10,
    learning_rate=0.1,
    reg=asvm.FLOAT64_EPS,
    steps=2000,
    eval_every=10,
    check_fro_at=1000,
    check_nuc_at=1500,
    sweep_steps=1000,
)
CONFIGS = {
    # The authors ran 100 seeds (RUN = 100); we use the same number in quick mode,
    # since a 20-seed mean is moved by a single slow seed (see the report / note).
    "quick": dict(_COMMON, seeds=100, sweep_ds=[2, 3, 4, 6, 8, 10, 16, 24], sweep_problems=40),
    "full": dict(_COMMON, seeds=400, sweep_ds=[2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48], sweep_problems=400),
}
SMOKE = dict(seeds=2, steps=40, eval_every=10, check_fro_at=30, check_nuc_at=40, sweep_ds=[2, 4], sweep_problems=2, sweep_steps=30)
# What `lgrad run --set` / `lgrad sweep` accept (lgrad.engine.config; refused before any compute).
LIMITS = {
    "n": Int(min=1),
    "T": Int(min=2),  # a token must be selected against at least one other
    "d": Int(min=1),
    "reg": Float(gt=0),
    "eval_every": Int(min=1),
    "check_fro_at": Int(min=1),
    "check_nuc_at": Int(min=1),
    "sweep_steps": Int(min=1),
    "seeds": Int(min=1),
    "sweep_ds": Int(min=1),
    "sweep_problems": Int(min=1),
}


def check_config(cfg: dict[str, Any]) -> None:
    """The two check points are multiples of eval_every within the run."""
    for k in ("check_fro_at", "check_nuc_at"):
        if cfg[k] % cfg["eval_every"] or not 0 < cfg[k] <= cfg["steps"]:
            raise ValueError(f"{k}={cfg[k]}: expected a multiple of eval_every={cfg['eval_every']} in (0, steps={cfg['steps']}]")


def memory_estimate(cfg: dict[str, Any]) -> int:
    """Bytes (float64): the problems and the (W, K, Q) iterates recorded every
    eval_every steps for every seed, and the same for the d-sweep's problems."""
    d, S = cfg["d"], cfg["seeds"]
    main = 8 * S * (2 * cfg["n"] * cfg["T"] * d + 4 * d * d * (cfg["steps"] // cfg["eval_every"] + 2))
    D = max(cfg["sweep_ds"], default=1)
    sweep = 8 * cfg["sweep_problems"] * (2 * cfg["n"] * cfg["T"] * D + 4 * D * D * (cfg["sweep_steps"] // cfg["eval_every"] + 2))
    return main + sweep




def _draw_length(cfg: dict[str, Any]) -> int:
    """Length of the flat random rows every problem of ``cfg`` is cut from (see ``_problems``)."""
    D = max([cfg["d"], *cfg["sweep_ds"]])
    return max(cfg["n"] * cfg["T"] * D, D * D, cfg["n"])


@functools.partial(jax.jit, static_argnums=2)
def _uniform_rows(keys, bounds, length):
    return jax.vmap(lambda k, b: jax.random.uniform(k, (length,), minval=-b, maxval=b))(keys, bounds)


def _problems(key, seeds, n, T, d, *, length):
    """``seeds`` problems (``asvm.make_problem``) and initialisations (``asvm.init_params``,
    both parameterisations) from ``key``: the same keys and draws, cut from flat rows.

    The threefry generator draws element i of ``normal(k, shape)`` from counter i, so a
    draw is the first ``prod(shape)`` entries of ``normal(k, (length,))`` reshaped; one
    compiled random program per seed count then serves every d instead of one per (d,
    shape, draw), which cost about 5 CPU s per d. The normalisation repeats
    ``make_problem``'s eager operations, so the problems and initialisations equal the
    library's bit for bit (tests/test_attention_svm_experiment.py).
    """
    kd, ki = jax.random.split(key)
    kv, ky, kx, kz = np.moveaxis(np.asarray(jax.vmap(lambda k: jax.random.split(k, 4))(jax.random.split(kd, seeds))), 1, 0)
    kw, kk, kq = np.moveaxis(np.asarray(jax.vmap(lambda k: jax.random.split(k, 3))(jax.random.split(ki, seeds))), 1, 0)
    normal = np.asarray(normal_rows(jnp.asarray(np.concatenate([kv, ky, kx, kz])), length)).reshape(4, seeds, length)
    b = np.full(3 * seeds, 1.0 / np.sqrt(d))
    unif = np.asarray(_uniform_rows(jnp.asarray(np.concatenate([kw, kk, kq])), jnp.asarray(b), length)).reshape(3, seeds, length)
    v, y = normal[0, :, :d], normal[1, :, :n]
    X, z = normal[2, :, : n * T * d].reshape(seeds, n, T, d), normal[3, :, : n * d].reshape(seeds, n, d)
    unit = jax.vmap(lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True))  # make_problem's eager ops, batched
    v = jax.vmap(lambda a: a / jnp.linalg.norm(a))(v)
    prob = asvm.AttentionProblem(unit(X), jnp.asarray(np.where(y > 0, 1.0, -1.0)), unit(z), v)
    params = {name: jnp.asarray(unif[i, :, : d * d].reshape(seeds, d, d)) for i, name in enumerate(("W", "K", "Q"))}
    return prob, params


def _seed(tree, s):
    return jax.tree.map(lambda a: np.asarray(a)[s], tree)


def _solve(cache, p, opt, norm):
    key = (tuple(int(o) for o in opt), norm)
    if key not in cache:
        try:
            cache[key] = asvm.att_svm(p.X, p.z, opt, norm=norm)
        except asvm.AttSVMInfeasible:
            cache[key] = None
    return cache[key]


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Both settings' summaries: ``local`` (correlation spreads at the check points, SVM
    solve counts, token-optimality shares) and ``sweep`` (one row per d)."""
    check_config(config)
    k_main, k_sweep = jax.random.split(jax.random.PRNGKey(config["seed"]))
    with ctx.variant(f"d={config['d']}, {config['seeds']} seeds"):
        local = _local_convergence(config, ctx, k_main)
    with ctx.variant("d sweep"):
        sweep = _overparam_sweep(config, ctx, k_sweep)
    return {"local": local, "sweep": sweep}


def _svm_curves(cfg, ctx, prob, res, S):
    """Per seed: the SVM of the tokens each model selects at the last iteration, and the
    correlation curves of both models against both norms' SVMs."""
    it = np.asarray(res.eval_steps)
    curves = {name: np.full((S, len(it)), np.nan) for name in ("W-fro", "W-nuc", "KQ-nuc", "KQ-fro")}
    out = dict(min_margin=np.inf, infeasible=0, polished=0, n_solves=0, local_W=[], global_W=[], global_KQ=[], same=[])
    for s in ctx.progress(range(S), total=S, desc="Att-SVM solves"):
        p = _seed(prob, s)
        cache: dict = {}
        gopt = np.asarray(asvm.globally_optimal_tokens(p))
        opts = {}
        for model in ("W", "KQ"):
            opts[model] = np.asarray(asvm.select_tokens(np.asarray(res.evals[model][-1, s]), p.X, p.z))
            for norm in ("fro", "nuc"):
                sol = _solve(cache, p, opts[model], norm)
                if sol is None:
                    out["infeasible"] += 1
                    continue
                curves[f"{model}-{norm}"][s] = np.asarray(asvm.correlation(res.evals[model][:, s], sol.W))
        for sol in (v for v in cache.values() if v is not None):
            out["n_solves"] += 1
            out["polished"] += int(sol.polished)
            out["min_margin"] = min(out["min_margin"], sol.min_margin)
        sol_w = cache.get((tuple(int(o) for o in opts["W"]), "fro"))
        if sol_w is not None:
            out["local_W"].append(bool(np.all(asvm.is_locally_optimal(p, opts["W"], sol_w))))
        out["global_W"].append(bool(np.all(opts["W"] == gopt)))
        out["global_KQ"].append(bool(np.all(opts["KQ"] == gopt)))
        out["same"].append(bool(np.all(opts["W"] == opts["KQ"])))
    return it, curves, out


def _spread(v: np.ndarray, *, below: float | None = 0.99) -> dict[str, float]:
    """Mean and spread over seeds (NaN = infeasible SVM, left out); with ``below`` the share of seeds under it."""
    v = v[np.isfinite(v)]
    out = dict(mean=float(np.mean(v)), std=float(np.std(v)), median=float(np.median(v)),
               p10=float(np.percentile(v, 10)), worst=float(np.min(v)), seeds=int(v.size))
    if below is not None:
        out[f"frac_below_{below:g}"] = float(np.mean(v < below))
    return out


def _local_convergence(cfg, ctx, key) -> dict[str, Any]:
    """The authors' local-convergence setting: both parameterisations, all seeds, one program."""
    S = cfg["seeds"]
    prob, params = _problems(key, S, cfg["n"], cfg["T"], cfg["d"], length=_draw_length(cfg))
    res = asvm.train_attention(
        prob, params, steps=cfg["steps"], learning_rate=cfg["learning_rate"], reg=cfg["reg"],
        eval_every=cfg["eval_every"], progress=ctx.progress,
    )
    it, curves, sv = _svm_curves(cfg, ctx, prob, res, S)
    i_fro, i_nuc = int(np.searchsorted(it, cfg["check_fro_at"])), int(np.searchsorted(it, cfg["check_nuc_at"]))
    at = {
        "W-fro": curves["W-fro"][:, i_fro], "W-nuc": curves["W-nuc"][:, i_fro],
        "KQ-nuc": curves["KQ-nuc"][:, i_nuc], "KQ-fro": curves["KQ-fro"][:, i_nuc],
        "W-fro-last": curves["W-fro"][:, -1], "KQ-nuc-last": curves["KQ-nuc"][:, -1],
    }
    stats = {k: _spread(v) for k, v in at.items()}
    diffs = {"W": _spread(at["W-fro"] - at["W-nuc"], below=None), "KQ": _spread(at["KQ-nuc"] - at["KQ-fro"], below=None)}
    for j, t in enumerate(it):
        ctx.log("correlation", step=int(t), **{k: float(np.nanmean(c[:, j])) for k, c in curves.items()},
                **{f"{k}_worst": float(np.nanmin(c[:, j])) for k, c in curves.items()})
    final_maxprob = {m: float(np.mean(res.history[f"maxprob_{m}"][-1])) for m in ("W", "KQ")}
    ctx.log("local", stats=stats, diffs=diffs, final_maxprob=final_maxprob, svm_min_margin=sv["min_margin"],
            svm_infeasible=sv["infeasible"], fro_polished=sv["polished"])
    _plot_curves(ctx, it, curves, cfg, S)
    shares = {"locally_optimal_W": float(np.mean(sv["local_W"])) if sv["local_W"] else float("nan"),
              "globally_optimal_W": float(np.mean(sv["global_W"])), "globally_optimal_KQ": float(np.mean(sv["global_KQ"])),
              "same_tokens_W_KQ": float(np.mean(sv["same"]))}
    counts = {k: sv[k] for k in ("min_margin", "infeasible", "polished", "n_solves")}
    return dict(stats=stats, diffs=diffs, final_maxprob=final_maxprob, token_shares=shares, **counts)


def _overparam_sweep(cfg, ctx, key) -> list[dict[str, Any]]:
    """Fraction of problems where GD selects the global tokens, by d.

    Every d is zero-padded to D = max(d) so that all (d, problem) pairs train in ONE
    compiled program; the padding is exact: padded token/query coordinates are 0, so
    the logits only see the top-left d x d block of W (and of K, Q, initialised with
    zeros outside it, which their gradients and the tiny weight decay keep at 0),
    and the per-array gradient norms are those of the d-dimensional model."""
    ds = [int(d) for d in cfg["sweep_ds"]]
    P, D = cfg["sweep_problems"], max(ds)
    parts, raw = [], []
    for d, kd in zip(ds, jax.random.split(key, len(ds))):
        sprob, sparams = _problems(kd, P, cfg["n"], cfg["T"], d, length=_draw_length(cfg))
        raw.append(sprob)
        pad = lambda a, axes: jnp.pad(a, [(0, D - d) if ax in axes else (0, 0) for ax in range(a.ndim)])  # noqa: E731
        parts.append((
            asvm.AttentionProblem(pad(sprob.X, (3,)), sprob.y, pad(sprob.z, (2,)), pad(sprob.v, (1,))),
            {k: pad(v, (1, 2)) for k, v in sparams.items()},
        ))
    allprob = jax.tree.map(lambda *a: jnp.concatenate(a), *[q for q, _ in parts])
    allparams = jax.tree.map(lambda *a: jnp.concatenate(a), *[w for _, w in parts])
    sres = asvm.train_attention(allprob, allparams, steps=cfg["sweep_steps"], learning_rate=cfg["learning_rate"],
                                reg=cfg["reg"], progress=ctx.progress)
    gopt_all = np.asarray(jax.vmap(asvm.globally_optimal_tokens)(allprob))
    sel_all = {m: np.asarray(jax.vmap(asvm.select_tokens)(sres.evals[m][-1], allprob.X, allprob.z)) for m in ("W", "KQ")}
    sweep = []
    for j, d in enumerate(ctx.progress(ds, total=len(ds), desc="SVM feasibility")):
        sl = slice(j * P, (j + 1) * P)
        row = {"d": d, "problems": P}
        for model in ("W", "KQ"):
            row[f"global_{model}"] = float(np.mean(np.all(sel_all[model][sl] == gopt_all[sl], axis=1)))
        feasible = 0
        for s in range(P):
            p = _seed(raw[j], s)
            try:
                asvm.att_svm(p.X, p.z, gopt_all[j * P + s], norm="fro")
                feasible += 1
            except asvm.AttSVMInfeasible:
                pass
        row["global_svm_feasible"] = feasible / P
        sweep.append(row)
        ctx.log("overparam", **row)
    _plot_sweep(ctx, sweep, cfg)
    return sweep


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The claims from :func:`measure`'s summaries and ``CRITERIA`` (thresholds on the seed means)."""
    cfg, local, sweep = config, measurements["local"], measurements["sweep"]
    S, st, df = cfg["seeds"], local["stats"], local["diffs"]
    th = CRITERIA
    late = (f"the same seeds at the last iteration ({cfg['steps']}): W mean {st['W-fro-last']['mean']:.4f}, "
            f"worst {st['W-fro-last']['worst']:.4f}; K^T Q mean {st['KQ-nuc-last']['mean']:.4f}, "
            f"worst {st['KQ-nuc-last']['worst']:.4f}")
    return [
        Claim.holds("W-fro-svm", "GD on W aligns with the Frobenius Att-SVM of its selected tokens "
                    f"(corr at iteration {cfg['check_fro_at']}, mean over {S} seeds; spread reported)",
                    _rounded(st["W-fro"]), f"mean >= {th['W-fro-svm']:g}", st["W-fro"]["mean"] >= th["W-fro-svm"],
                    note="the paper shows mean curves over its runs and proves per-run convergence only in the limit; "
                         "seeds whose largest-softmax tokens still change after the check point converge late; "
                         + late + "; independent numpy run (20 seeds): 0.995 (worst 0.990)"),
        Claim.holds("KQ-nuc-svm", "GD on (K, Q) aligns with the nuclear-norm Att-SVM "
                    f"(corr(K^T Q, W_nuc) at iteration {cfg['check_nuc_at']}, mean over {S} seeds; spread reported)",
                    _rounded(st["KQ-nuc"]), f"mean >= {th['KQ-nuc-svm']:g}", st["KQ-nuc"]["mean"] >= th["KQ-nuc-svm"],
                    note="independent numpy run (20 seeds): 0.996 (worst 0.981)"),
        Claim.holds("W-prefers-fro", f"W is >= {th['prefers-own-norm']:g} closer to the Frobenius SVM than to the "
                    f"nuclear one (per-seed corr difference at iteration {cfg['check_fro_at']}, mean over seeds)",
                    _rounded(df["W"]), f"mean >= {th['prefers-own-norm']:g}", df["W"]["mean"] >= th["prefers-own-norm"],
                    note=f"corr(W, W_nuc) mean {st['W-nuc']['mean']:.4f} (reference ~0.87)"),
        Claim.holds("KQ-prefers-nuc", f"K^T Q is >= {th['prefers-own-norm']:g} closer to the nuclear SVM than to the "
                    f"Frobenius one (per-seed corr difference at iteration {cfg['check_nuc_at']}, mean over seeds)",
                    _rounded(df["KQ"]), f"mean >= {th['prefers-own-norm']:g}", df["KQ"]["mean"] >= th["prefers-own-norm"],
                    note=f"corr(K^T Q, W_fro) mean {st['KQ-fro']['mean']:.4f} (reference ~0.87)"),
        Claim.at_least("svm-constraints", "every Att-SVM solution satisfies its constraints (smallest margin over all "
                       "solutions)", local["min_margin"], th["svm-constraints"],
                       note=f"{local['n_solves']} solutions, {local['polished']} Frobenius ones polished to machine "
                            f"precision by the active-set KKT solve; {local['infeasible']} infeasible"),
        Claim.finding("token-optimality", f"share of the {S} seeds (d = {cfg['d']}) whose GD-selected tokens are locally "
                      "optimal (Def. 2, W model) / globally optimal (W, K^T Q) / the same for W and (K, Q)",
                      {**local["token_shares"], "final_mean_max_softmax": local["final_maxprob"]},
                      note="the paper's theory: GD converges to locally optimal tokens, not necessarily global ones"),
        Claim.finding("overparam-global", f"fraction of {cfg['sweep_problems']} random problems (n={cfg['n']}, "
                      f"T={cfg['T']}) where GD ({cfg['sweep_steps']} steps) ends on the globally optimal tokens, by d; "
                      "and where the global-token Att-SVM is feasible", sweep,
                      note="the paper: over-parameterisation (larger d) makes the SVM feasible and convergence global"),
    ]


def _plot_curves(ctx, it, curves, cfg, S) -> None:
    import matplotlib.pyplot as plt

    style = {
        "W-fro": ("tab:blue", "-", "W vs Frobenius SVM"),
        "W-nuc": ("tab:blue", "--", "W vs nuclear SVM (control)"),
        "KQ-nuc": ("tab:red", "-", "K$^T$Q vs nuclear SVM"),
        "KQ-fro": ("tab:red", "--", "K$^T$Q vs Frobenius SVM (control)"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for ax, ylim in zip(axes, ((-0.3, 1.02), (0.75, 1.005))):
        for k, (c, ls, label) in style.items():
            m = np.nanmean(curves[k], axis=0)
            lo, hi = np.nanpercentile(curves[k], 10, axis=0), np.nanpercentile(curves[k], 90, axis=0)
            ax.plot(it, m, color=c, ls=ls, lw=1.6, label=label)
            ax.fill_between(it, lo, hi, color=c, alpha=0.12 if ls == "-" else 0.07, lw=0)
        ax.axvline(cfg["check_fro_at"], color="tab:blue", lw=0.7, ls=":")
        ax.axvline(cfg["check_nuc_at"], color="tab:red", lw=0.7, ls=":")
        ax.set_ylim(*ylim)
        ax.set_xlabel("iteration")
        ax.set_ylabel("correlation with the Att-SVM solution")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"mean over {S} seeds, band 10-90th percentile")
    axes[1].set_title("zoom (dotted: the checked iterations)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Normalised GD, n={cfg['n']}, T={cfg['T']}, d={cfg['d']}, lr={cfg['learning_rate']}, float64")
    fig.tight_layout()
    ctx.savefig(fig, "svm_correlation.png", dpi=100)


def _plot_sweep(ctx, sweep, cfg) -> None:
    import matplotlib.pyplot as plt

    ds = np.array([r["d"] for r in sweep])
    P = cfg["sweep_problems"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, c, label in (("global_W", "tab:blue", "GD on W ends on global tokens"),
                          ("global_KQ", "tab:red", "GD on (K,Q) ends on global tokens"),
                          ("global_svm_feasible", "0.4", "global-token Att-SVM feasible")):
        f = np.array([r[key] for r in sweep])
        se = np.sqrt(np.clip(f * (1 - f), 0, None) / max(P, 1))
        ax.errorbar(ds, f, yerr=se, color=c, marker="o", ms=4, capsize=2, lw=1.4,
                    ls="--" if key == "global_svm_feasible" else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ds)
    ax.set_xticklabels([str(d) for d in ds])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("d (embedding dimension)")
    ax.set_ylabel(f"fraction of {P} problems (±1 s.e.)")
    ax.set_title(f"Over-parameterisation: n={cfg['n']}, T={cfg['T']}, {cfg['sweep_steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.savefig(fig, "overparam_global.png", dpi=100)
