"""Forward-looking GFlowNets (FL-DB) vs detailed balance: local credit speeds up training.

Paper: Pan, Malkin, Zhang & Bengio 2023, "Better Training of GFlowNets with Local
Credit and Incomplete Trajectories" (ICML, arXiv:2302.01687). Our account:
``docs/papers/flgfn-credit.md``. Library: ``lgrad.gflownet`` (pure losses over
batched trajectories, hypergrid and set environments, rollouts in one ``lax.scan``).

Setting. (1) A tiny 8-state DAG with exact flows (uniform backward policy): TB, DB,
FL-DB (paper: log F~(x) = 0; code: learned) must give zero loss. (2) The 2-D hypergrid,
H = 8, R0 = 1e-3, E(s) = -log R(s) on every state; one MLP (2 x 256, leaky ReLU) gives
forward logits, backward logits and the log flow; Adam 1e-3, batch 16; the same
exploration rate for both objectives. L1 = sum_x |P_T(x) - R(x)/Z| over the 64 cells,
P_T the policy's exact terminal distribution (dynamic programming; a sampled
histogram is reported at the end). Steps to L1 < 0.1 for each of >= 3 seeds.
(3) The authors' set task (30 elements, sets of 20, E = sum of per-element
energies from 8 distinct values in [-1, 1], our own draw), Adam 1e-3, batch 16,
uniform exploration (exp_weight 1.0, the authors' setting for both objectives on
the small size), 16 on-policy evaluation samples per step; metric: the mean reward
of the 100 best distinct sets sampled so far; threshold: a fixed fraction of the
exact optimum of that metric (set a priori).

Config change after a prototype run: quick ``grid_steps`` 2500 -> 1000 and
``set_steps`` 1000 -> 800, for run time only (in the prototype every hypergrid seed
of both objectives had crossed L1 < 0.1 by step 750, and on the set task neither
objective reached the threshold in 1000 steps); no criterion changed.

Command: ``lgrad run flgfn-credit --quick``.
Expected: zero loss at exact flows (1e-6); FL-DB reaches L1 < 0.1 in fewer steps
than DB (mean over seeds, every seed reaching); on the set task FL-DB reaches the
top-100 threshold first (mean steps over seeds).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad import gflownet as gfn
from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Bool, Float, Int
from lgrad.train import TrainState, run_loop

NAME = "flgfn-credit"
PAPER = "Pan, Malkin, Zhang, Bengio 2023, Better Training of GFlowNets with Local Credit and Incomplete Trajectories (ICML)"
DESCRIPTION = "GFlowNet objectives TB / DB / FL-DB: exact flows on a tiny DAG, hypergrid L1 and set-task top-100 reward speed."
EXPECTED = "exact flows give zero loss; FL-DB reaches hypergrid L1 < 0.1 and the set-task top-100 threshold in fewer steps than DB."
CRITERIA = {
    "exact_loss": 1e-6,  # largest loss of TB / DB / FL-DB (both terminal conventions) at exact flows
    "l1": 0.1,  # hypergrid: sum_x |P_T(x) - R(x)/Z|
    "top100_fraction": 0.75,  # set task: threshold = this fraction of the exact optimum of the top-100 mean reward
}
METHODS = ("db", "fl_db")

_COMMON = dict(seed=0, height=8, r0=1e-3, hidden=256, learning_rate=1e-3, batch_size=16, grid_explore=0.1,
               n_elements=30, set_size=20, set_explore=1.0, energy_seed=0, fix_terminal=True, eval_every=25)
CONFIGS = {
    "quick": dict(_COMMON, n_seeds=3, grid_steps=1000, set_steps=800),
    "full": dict(_COMMON, n_seeds=5, grid_steps=20000, set_steps=10000),
}
SMOKE = dict(n_seeds=1, grid_steps=50, set_steps=50, hidden=16)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "height": Int(min=2, max=64),
    "r0": Float(gt=0),
    "hidden": Int(min=1, max=4096),
    "grid_explore": Float(min=0, max=1),
    "n_elements": Int(min=2, max=40),  # the exact top-100 enumeration grows fast with n
    "set_size": Int(min=1, max=40),
    "set_explore": Float(min=0, max=1),
    "energy_seed": Int(min=0, max=2**31 - 1),
    "n_seeds": Int(min=1, max=64),
    "eval_every": Int(min=1, max=10**6),
    "fix_terminal": Bool(),
    "grid_steps": Int(min=1, max=10**8),
    "set_steps": Int(min=1, max=10**8),
}


def check_config(config: dict[str, Any]) -> None:
    if config["set_size"] > config["n_elements"]:
        raise ValueError(f"set_size={config['set_size']}: must be <= n_elements={config['n_elements']}")
    for key in ("grid_steps", "set_steps"):
        if config[key] % config["eval_every"]:
            raise ValueError(f"{key}={config[key]}: must be a multiple of eval_every={config['eval_every']}")


# ----------------------------------------------------------------------------- training
def _loss_fn(env, apply, method: str, fix_terminal: bool):
    def loss(params, traj):
        t = gfn.trajectory_terms(env, lambda f: apply(params, f), traj)
        if method == "db":
            return gfn.detailed_balance(t["log_flow"], t["log_pf"], t["log_pb"], t["log_reward"], t["mask"], t["done"])
        return gfn.forward_looking_db(t["log_flow"], t["log_pf"], t["log_pb"], t["log_r"], t["mask"], t["done"],
                                      fix_terminal=fix_terminal)

    return loss


def _trainer(env, cfg, method: str, explore: float, n_eval: int):
    """``(init(key) -> TrainState, step)``: one objective on ``env``; the step also draws
    ``n_eval`` on-policy samples (their final states and log-rewards are recorded)."""
    tx = optax.adam(cfg["learning_rate"])
    _, apply = gfn.policy_model(env, jax.random.PRNGKey(0), hidden=cfg["hidden"])
    loss_fn = _loss_fn(env, apply, method, cfg["fix_terminal"])

    def init(key):
        params, _ = gfn.policy_model(env, key, hidden=cfg["hidden"])
        return TrainState(params, tx.init(params), key, jnp.zeros([], jnp.int32))

    def step(st: TrainState):
        key, k_train, k_eval = jax.random.split(st.key, 3)
        policy = lambda f: jax.lax.stop_gradient(apply(st.params, f)[0])  # noqa: E731
        traj = gfn.sample_trajectories(k_train, env, policy, cfg["batch_size"], explore=explore)
        loss, grads = jax.value_and_grad(loss_fn)(st.params, traj)
        updates, opt_state = tx.update(grads, st.opt_state, st.params)
        metrics = {"loss": loss}
        if n_eval:
            ev = gfn.sample_trajectories(k_eval, env, policy, n_eval)
            final = ev.states[:, -1]
            metrics["final"] = final.astype(jnp.int8)
            metrics["log_reward"] = -jax.vmap(env.energy)(final)
        return TrainState(optax.apply_updates(st.params, updates), opt_state, key, st.step + 1), metrics

    return init, step, apply


def _grid_l1(env, apply, cfg):
    states = jnp.asarray(gfn.hypergrid_states(cfg["height"], 2))
    feats = jax.vmap(env.features)(states)
    log_r = -jax.vmap(env.energy)(states)
    target = jax.nn.softmax(log_r)
    masks = jax.vmap(env.forward_mask)(states)

    def evaluate(st):
        lpf = gfn.masked_log_softmax(apply(st.params, feats)[0], masks)
        p = gfn.hypergrid_terminal_distribution(lpf, cfg["height"], 2)
        return {"l1": jnp.sum(jnp.abs(p - target)), "p": p}

    return evaluate, np.asarray(target)


def _first_reach(values: np.ndarray, steps: np.ndarray, ok) -> float:
    """First step at which ``ok(values)`` holds (nan if never)."""
    hit = np.nonzero(ok(values))[0]
    return float(steps[hit[0]]) if len(hit) else float("nan")


def _run_grid(cfg, ctx: RunContext) -> dict[str, Any]:
    """Per objective: the exact L1 every ``eval_every`` steps (evals x seeds), the final
    terminal distribution of every seed and the sampled L1 of the final policies."""
    env = gfn.hypergrid(height=cfg["height"], ndim=2, r0=cfg["r0"])
    keys = jax.random.split(jax.random.PRNGKey(cfg["seed"]), cfg["n_seeds"])
    out: dict[str, Any] = {}
    for method in METHODS:
        init, step, apply = _trainer(env, cfg, method, cfg["grid_explore"], 0)
        evaluate, target = _grid_l1(env, apply, cfg)
        with ctx.variant(f"hypergrid/{method}"):
            res = run_loop(jax.vmap(step), jax.vmap(init)(keys), steps=cfg["grid_steps"], eval_fn=jax.vmap(evaluate),
                           eval_every=cfg["eval_every"], progress=ctx.progress)
        l1 = np.asarray(res.evals["l1"])  # (n_evals, seeds)
        sampled = _sampled_l1(env, apply, res.state.params, cfg, target)
        out[method] = dict(l1=l1.tolist(), p=np.asarray(res.evals["p"])[-1], sampled_l1=sampled)
        out["steps"], out["target"] = np.asarray(res.eval_steps).tolist(), target
        ctx.log_history(f"hypergrid/{method}", {"loss": res.history["loss"].mean(-1)}, every=cfg["eval_every"])
        for i, s in enumerate(res.eval_steps):
            ctx.log(f"hypergrid/{method}/l1", int(s), l1=l1[i].tolist())
    return out


def _sampled_l1(env, apply, params, cfg, target, n: int = 20000) -> list[float]:
    """Check of the exact L1: the histogram of ``n`` on-policy rollouts of the final policy
    of every seed (one compiled program for all seeds)."""
    def finals(p_s, key):
        traj = gfn.sample_trajectories(key, env, lambda f: apply(p_s, f)[0], n)
        return traj.states[:, -1, 0] * cfg["height"] + traj.states[:, -1, 1]

    keys = jnp.stack([jax.random.PRNGKey(cfg["seed"] + 7 + s) for s in range(cfg["n_seeds"])])
    final = np.asarray(jax.jit(jax.vmap(finals))(params, keys))
    return [float(np.abs(np.bincount(f, minlength=cfg["height"] ** 2) / n - target).sum()) for f in final]


def _top100_curve(codes: np.ndarray, rewards: np.ndarray, per_step: int, eval_steps: np.ndarray, k: int = 100) -> np.ndarray:
    """Mean reward of the ``k`` best distinct sets among the samples of the first ``t`` steps, for ``t`` in ``eval_steps``."""
    uniq, first = np.unique(codes, return_index=True)
    del uniq
    r_first, seen_at = rewards[first], first // per_step  # step (0-based) at which each distinct set was first seen
    out = []
    for t in eval_steps:
        r = r_first[seen_at < t]
        out.append(float(np.mean(np.sort(r)[-k:])) if len(r) else 0.0)
    return np.asarray(out)


def _run_set(cfg, ctx: RunContext) -> dict[str, Any]:
    """Per objective: the top-100 mean reward every ``eval_every`` steps (evals x seeds)
    and the exact optimum of that metric."""
    energies = gfn.set_energies(cfg["n_elements"], seed=cfg["energy_seed"])
    env = gfn.set_env(energies, set_size=cfg["set_size"])
    keys = jax.random.split(jax.random.PRNGKey(cfg["seed"] + 1), cfg["n_seeds"])
    weights = 2 ** np.arange(cfg["n_elements"], dtype=np.int64)  # a set's code (n_elements <= 40: no overflow)
    eval_steps = np.arange(cfg["eval_every"], cfg["set_steps"] + 1, cfg["eval_every"])
    out: dict[str, Any] = {"optimum": float(np.mean(gfn.set_top_rewards(energies, cfg["set_size"], 100))),
                           "steps": eval_steps.tolist()}
    for method in METHODS:
        init, step, _ = _trainer(env, cfg, method, cfg["set_explore"], cfg["batch_size"])
        with ctx.variant(f"set/{method}"):
            res = run_loop(jax.vmap(step), jax.vmap(init)(keys), steps=cfg["set_steps"], progress=ctx.progress)
        final = np.asarray(res.history["final"]).astype(np.int64)  # (steps, seeds, n_eval, n)
        log_r = np.asarray(res.history["log_reward"], np.float64)
        curves = np.stack([
            _top100_curve((final[:, s] @ weights).reshape(-1), np.exp(log_r[:, s]).reshape(-1), final.shape[2], eval_steps)
            for s in range(cfg["n_seeds"])
        ], axis=1)  # (n_evals, seeds)
        out[method] = {"curves": curves.tolist()}
        ctx.log_history(f"set/{method}", {"loss": res.history["loss"].mean(-1)}, every=cfg["eval_every"])
        for i, s in enumerate(eval_steps):
            ctx.log(f"set/{method}/top100", int(s), top100=curves[i].tolist())
    return out


def _exact_losses() -> dict[str, float]:
    """TB / DB / FL-DB (both terminal conventions) at the exact flows of the tiny DAG, float64."""
    with jax.enable_x64(True):
        b = {k: jnp.asarray(v) for k, v in gfn.exact_flow_batch(*gfn.tiny_dag(seed=0)).items()}
        fl = lambda fix: gfn.forward_looking_db(b["log_flow_tilde"], b["log_pf"], b["log_pb"], b["log_r"], b["mask"],  # noqa: E731
                                                b["done"], fix_terminal=fix)
        return {
            "TB": float(gfn.trajectory_balance(b["log_z"], b["log_pf"], b["log_pb"], b["log_reward"], b["mask"])),
            "DB": float(gfn.detailed_balance(b["log_flow"], b["log_pf"], b["log_pb"], b["log_reward"], b["mask"], b["done"])),
            "FL-DB (paper, log F~(x)=0)": float(fl(True)),
            "FL-DB (code, learned log F~(x))": float(fl(False)),
        }


def _faster(fl: list[float], db: list[float], budget: int) -> tuple[dict[str, Any], bool]:
    """FL-DB reaches in every seed and its mean steps are below DB's (a DB seed that never
    reaches counts as the budget, which favours DB)."""
    fl_a, db_a = np.asarray(fl), np.nan_to_num(np.asarray(db), nan=float(budget))
    measured = {"fl_db_steps": fl, "db_steps": db, "fl_db_mean": float(np.mean(fl_a)), "db_mean_censored": float(np.mean(db_a))}
    return measured, bool(np.all(np.isfinite(fl_a)) and np.mean(fl_a) < np.mean(db_a))


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    cfg = dict(config)
    exact = _exact_losses()
    grid = _run_grid(cfg, ctx)
    sets = _run_set(cfg, ctx)
    _plot(ctx, cfg, grid, sets)
    return {"exact": exact,
            "grid": {"steps": grid["steps"], **{m: {"l1": grid[m]["l1"], "sampled_l1": grid[m]["sampled_l1"]} for m in METHODS}},
            "set": sets}


def _reach(curves: list[list[float]], steps: list[int], ok) -> list[float]:
    """Per seed (column of ``curves``, evals x seeds): the first step at which ``ok`` holds (nan if never)."""
    values = np.asarray(curves, float)
    return [_first_reach(values[:, s], np.asarray(steps), ok) for s in range(values.shape[1])]


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    grid, sets, exact = measurements["grid"], measurements["set"], measurements["exact"]
    threshold = CRITERIA["top100_fraction"] * sets["optimum"]
    g_reach = {m: _reach(grid[m]["l1"], grid["steps"], lambda v: v < CRITERIA["l1"]) for m in METHODS}
    s_reach = {m: _reach(sets[m]["curves"], sets["steps"], lambda v: v >= threshold) for m in METHODS}
    g_meas, g_ok = _faster(g_reach["fl_db"], g_reach["db"], config["grid_steps"])
    s_meas, s_ok = _faster(s_reach["fl_db"], s_reach["db"], config["set_steps"])
    every, seeds = f"checked every {config['eval_every']} steps", config["n_seeds"]
    return [
        Claim.at_most("exact-flows-zero-loss", "on a tiny DAG (8 states, leaves at depths 2 and 3) the exact flows give zero TB, DB "
                      "and FL-DB loss (both terminal conventions)", max(exact.values()), CRITERIA["exact_loss"], note=str(exact)),
        Claim.holds("hypergrid-fl-db-faster", f"hypergrid H={config['height']}, 2-D: FL-DB reaches L1 < {CRITERIA['l1']} in fewer "
                    f"steps than DB ({seeds} seeds, {every})", g_meas,
                    "every FL-DB seed reaches; mean FL-DB steps < mean DB steps (DB non-reaching = budget)", g_ok),
        Claim.holds("set-fl-db-first", f"set task ({config['n_elements']} elements, sets of {config['set_size']}): FL-DB reaches "
                    f"the top-100 mean reward threshold {threshold:.4g} ({CRITERIA['top100_fraction']} x exact optimum "
                    f"{sets['optimum']:.4g}) first ({seeds} seeds, {every})", s_meas,
                    "every FL-DB seed reaches; mean FL-DB steps < mean DB steps (DB non-reaching = budget)", s_ok),
        Claim.finding("hypergrid-final-l1", f"final L1 per seed after {config['grid_steps']} steps: exact (DP) and from "
                      "20,000 on-policy rollouts", {"exact": {m: grid[m]["l1"][-1] for m in METHODS},
                                                    "sampled": {m: grid[m]["sampled_l1"] for m in METHODS}}),
        Claim.finding("set-final-top100", f"top-100 mean reward per seed after {config['set_steps']} steps",
                      {m: sets[m]["curves"][-1] for m in METHODS}),
    ]


def _plot(ctx: RunContext, cfg, grid, sets) -> None:
    import matplotlib.pyplot as plt

    colors = {"db": "tab:blue", "fl_db": "tab:red"}
    labels = {"db": "DB", "fl_db": "FL-DB"}
    fig, axes = plt.subplots(1, 5, figsize=(22, 4.2))
    for m in METHODS:
        l1, curves = np.asarray(grid[m]["l1"]), np.asarray(sets[m]["curves"])
        axes[0].semilogy(grid["steps"], l1, color=colors[m], alpha=0.5, lw=1)
        axes[0].semilogy(grid["steps"], l1.mean(1), color=colors[m], lw=2.2, label=labels[m])
        axes[1].plot(sets["steps"], curves, color=colors[m], alpha=0.5, lw=1)
        axes[1].plot(sets["steps"], curves.mean(1), color=colors[m], lw=2.2, label=labels[m])
    axes[0].axhline(CRITERIA["l1"], color="k", ls=":", label=f"L1 = {CRITERIA['l1']}")
    axes[0].set(title=f"hypergrid H={cfg['height']}: exact L1 (thin: seeds)", xlabel="step", ylabel="sum |P_T - R/Z|")
    axes[1].axhline(CRITERIA["top100_fraction"] * sets["optimum"], color="k", ls=":", label="threshold")
    axes[1].axhline(sets["optimum"], color="0.5", ls="--", label="exact optimum")
    axes[1].set(title="set task: top-100 mean reward", xlabel="step", ylabel="mean reward")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    h = cfg["height"]
    panels = [("target R/Z", grid["target"]), ("DB, seed 0", grid["db"]["p"][0]), ("FL-DB, seed 0", grid["fl_db"]["p"][0])]
    vmax = max(float(np.max(p)) for _, p in panels)
    for ax, (title, p) in zip(axes[2:], panels):
        im = ax.imshow(np.asarray(p).reshape(h, h), vmin=0, vmax=vmax, cmap="viridis")
        ax.set(title=f"{title} (final)", xticks=[], yticks=[])
    fig.colorbar(im, ax=axes[2:], fraction=0.02)
    fig.suptitle("Forward-looking GFlowNets: FL-DB vs DB")
    ctx.savefig(fig, "flgfn.png")
