"""Deep Gradient Compression vs dense momentum SGD on MNIST-5k (PAPERS.md B2).

Paper: Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing the
Communication Bandwidth for Distributed Training", ICLR 2018 (Algorithm 1,
Sections 3.2-3.3, Table 1-2 style compression ratios).
Command: ``lgrad run dgc-compression --quick`` (``--full``: 8 workers, a wider MLP,
more epochs).
Expected: with n workers training a 784-H-10 MLP, DGC at 0.1% density (after the
paper's warm-up 25%, 6.25%, 1.56%, 0.39%, 0.1%) sends >= 270x fewer bytes per step
than dense momentum SGD (values + int32 indices counted by ``lgrad.distributed.comm``)
and ends within 0.5 accuracy points of it; the sampled threshold selects between
0.8k and 1.3k entries; sent + residual equals the accumulated momentum to 1e-5.

History (kept for honesty): a first quick config (hidden 1024, 20 epochs, lr 0.05)
left dense momentum SGD undertrained (94.1% test accuracy) and DGC 0.7 points
behind it, failing the 0.5-point claim. The current quick config trains both to
convergence (hidden 512, 40 epochs, lr 0.1); the criterion itself never changed.
The paper's claim is about converged training, but at this scale the accuracy gap
depends on the training budget.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.data import mnist5k, train_test_split
from lgrad.distributed import comm, make_program
from lgrad.distributed.partition import iid
from lgrad.engine import Claim, RunContext, run_loop
from lgrad.optim.dgc import LocalStep, exchange, leaf_budget, local_step, warmup_phases

NAME = "dgc-compression"
PAPER = "Lin et al. 2018, Deep Gradient Compression (ICLR)"
DESCRIPTION = "n-worker MLP on MNIST-5k: dense momentum SGD vs DGC at 0.1% density (bytes counted, indices included)."
EXPECTED = ">= 270x fewer bytes than dense, test accuracy within 0.5 points, selected count in [0.8k, 1.3k]."

CONFIGS = {
    "quick": dict(
        seed=0, n_workers=4, hidden=512, batch_per_worker=32, epochs=40, learning_rate=0.1, momentum=0.9,
        final_density=0.001, schedule="paper", min_compress_size=100, eval_every=31, test_fraction=0.2,
    ),
    "full": dict(
        seed=0, n_workers=8, hidden=2048, batch_per_worker=32, epochs=60, learning_rate=0.1, momentum=0.9,
        final_density=0.001, schedule="paper", min_compress_size=100, eval_every=15, test_fraction=0.2,
    ),
}
SMOKE = dict(hidden=64, epochs=2, batch_per_worker=125, eval_every=4, final_density=0.25)


def _init_mlp(key, hidden):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (784, hidden)) * jnp.sqrt(2.0 / 784),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, 10)) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.zeros((10,)),
    }


def _logits(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _loss(p, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y))


def run(config: dict[str, Any], ctx: RunContext) -> list[Claim]:
    cfg = config
    n, bsz = cfg["n_workers"], cfg["batch_per_worker"]
    train, test = train_test_split(mnist5k(), cfg["test_fraction"], seed=cfg["seed"])
    parts = iid(train.y, n, seed=cfg["seed"])
    m = min(len(p) for p in parts)  # equal shards (drop at most n-1 samples)
    xs = jnp.asarray(np.stack([train.x[p[:m]] for p in parts]))
    ys = jnp.asarray(np.stack([train.y[p[:m]] for p in parts]))
    xt, yt = jnp.asarray(test.x), jnp.asarray(test.y)
    steps_per_epoch = max(1, m // bsz)
    total = cfg["epochs"] * steps_per_epoch
    params0 = _init_mlp(jax.random.PRNGKey(cfg["seed"]), cfg["hidden"])
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params0))
    rep = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), t)  # noqa: E731
    lr, mom = cfg["learning_rate"], cfg["momentum"]

    def batch(x, y, key):
        idx = jax.random.randint(key, (bsz,), 0, x.shape[0])
        return x[idx], y[idx]

    def evaluate(carry):
        p = jax.tree.map(lambda a: a[0], carry[0])
        acc = jnp.mean(jnp.argmax(_logits(p, xt), -1) == yt)
        spread = sum(jnp.max(jnp.abs(a - a[0])) for a in jax.tree.leaves(carry[0]))
        return {"test_acc": acc, "replica_spread": spread}

    # ---- dense momentum SGD: pmean of the gradients, then optax.sgd ------------------
    sgd = optax.sgd(lr, momentum=mom)

    def dense_worker(p, s, x, y, key):
        xb, yb = batch(x, y, key)
        loss, g = jax.value_and_grad(_loss)(p, xb, yb)
        with comm.counting() as sent:
            g = comm.pmean(g)
        u, s = sgd.update(g, s, p)
        return optax.apply_updates(p, u), s, {"loss": loss, "bytes": jnp.asarray(sent.bytes, jnp.float32)}

    dense_prog = make_program(dense_worker, n_workers=n, in_axes=(0, 0, 0, 0, 0))

    def dense_step(c):
        p, s, key, t = c
        keys = jax.random.split(jax.random.fold_in(key, t), n)
        p, s, met = dense_prog(p, s, xs, ys, keys)
        return (p, s, key, t + 1), jax.tree.map(lambda a: a[0], met) | {"loss": jnp.mean(met["loss"])}

    key = jax.random.PRNGKey(cfg["seed"] + 1)
    carry = (rep(params0), jax.vmap(sgd.init)(rep(params0)), key, jnp.zeros([], jnp.int32))
    dense = run_loop(dense_step, carry, steps=total, eval_fn=evaluate, eval_every=cfg["eval_every"],
                     progress=ctx.progress)

    # ---- DGC: the library pieces, one run_loop segment per warm-up density ----------
    phases = warmup_phases(total, steps_per_epoch, final_density=cfg["final_density"], schedule=cfg["schedule"])
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params0)]

    def make_dgc_step(density):
        def worker(p, u, v, x, y, key, t):
            xb, yb = batch(x, y, key)
            loss, g = jax.value_and_grad(_loss)(p, xb, yb)
            st: LocalStep = local_step(
                g, u, v, density=density, momentum=mom, min_compress_size=cfg["min_compress_size"],
                key=jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(cfg["seed"] + 7), t), comm.axis_index()),
            )
            with comm.counting() as sent:
                agg = exchange(st, g)
            new_p = jax.tree.map(lambda a, b: a - lr * b, p, agg)
            # bookkeeping: own sent tensor + residual == accumulated (to float rounding)
            own = exchange(st, g, axis_name=None)
            book = jnp.max(jnp.stack([jnp.max(jnp.abs(o + r - a)) for o, r, a in
                                      zip(jax.tree.leaves(own), jax.tree.leaves(st.v), jax.tree.leaves(st.accumulated))]))
            counts = jnp.stack([mm.count if mm is not None else -1 for mm in st.messages])
            est = jnp.stack([mm.estimated if mm is not None else -1 for mm in st.messages])
            return new_p, st.u, st.v, {"loss": loss, "bytes": jnp.asarray(sent.bytes, jnp.float32),
                                      "bookkeeping": book, "sent": counts, "estimated": est}

        prog = make_program(worker, n_workers=n, in_axes=(0, 0, 0, 0, 0, 0, None))

        def step(c):
            p, u, v, key, t = c
            keys = jax.random.split(jax.random.fold_in(key, t), n)
            p, u, v, met = prog(p, u, v, xs, ys, keys, t)
            out = {"loss": jnp.mean(met["loss"]), "bytes": met["bytes"][0],
                   "bookkeeping": jnp.max(met["bookkeeping"]), "sent": met["sent"], "estimated": met["estimated"],
                   "density": jnp.asarray(density, jnp.float32)}
            return (p, u, v, key, t + 1), out

        return step

    zeros = rep(jax.tree.map(jnp.zeros_like, params0))
    carry = (rep(params0), zeros, zeros, key, jnp.zeros([], jnp.int32))
    hist: list[dict[str, np.ndarray]] = []
    evals: list[dict[str, np.ndarray]] = []
    eval_steps: list[np.ndarray] = []
    done = 0
    for n_steps, density in phases:
        res = run_loop(make_dgc_step(density), carry, steps=n_steps, eval_fn=evaluate,
                       eval_every=min(cfg["eval_every"], n_steps), start_step=done, progress=ctx.progress)
        carry = res.state
        hist.append(res.history | {"phase_density": np.full(n_steps, density)})
        evals.append(res.evals)
        eval_steps.append(res.eval_steps)
        done += n_steps
    cat = lambda key_, ds: np.concatenate([d[key_] for d in ds], axis=0)  # noqa: E731
    dgc_h = {k: cat(k, hist) for k in hist[0]}
    dgc_ev = {k: cat(k, evals) for k in evals[0]}
    dgc_steps = np.concatenate(eval_steps)

    # ---- measurements --------------------------------------------------------------
    final_phase = dgc_h["phase_density"] == cfg["final_density"]
    if not final_phase.any():  # too short to finish the warm-up: measure the last phase
        final_phase = dgc_h["phase_density"] == dgc_h["phase_density"][-1]
    final_density = float(dgc_h["phase_density"][-1])
    dense_bytes = float(dense.history["bytes"][0])
    dgc_bytes_final = float(dgc_h["bytes"][final_phase][0])
    ratio = dense_bytes / dgc_bytes_final
    acc_dense = float(dense.evals["test_acc"][-1])
    acc_dgc = float(dgc_ev["test_acc"][-1])
    comp = [i for i, s in enumerate(sizes) if s >= cfg["min_compress_size"]]
    ks = np.array([leaf_budget(sizes[i], final_density)[0] for i in comp])
    sent = dgc_h["sent"][final_phase][:, :, comp].astype(np.float64)  # (steps, workers, leaves)
    est = dgc_h["estimated"][final_phase][:, :, comp].astype(np.float64)
    rel_sent = sent / ks
    rel_est = est / ks
    in_range = float(np.mean((rel_sent >= 0.8) & (rel_sent <= 1.3)))
    big = ks >= 100  # leaves where a 1% sample can estimate the threshold (k >= 100)
    est_in_range = float(np.mean((rel_est[:, :, big] >= 0.8) & (rel_est[:, :, big] <= 1.3))) if big.any() else float("nan")
    book = float(np.max(dgc_h["bookkeeping"]))
    cum_dense = np.cumsum(dense.history["bytes"])
    cum_dgc = np.cumsum(dgc_h["bytes"])

    ctx.log_history("dense", {"loss": dense.history["loss"], "bytes": dense.history["bytes"]}, every=10)
    ctx.log_history("dgc", {"loss": dgc_h["loss"], "bytes": dgc_h["bytes"], "density": dgc_h["density"]}, every=10)
    for s_, a_ in zip(dense.eval_steps, dense.evals["test_acc"]):
        ctx.log("dense_eval", step=s_, test_acc=a_)
    for s_, a_ in zip(dgc_steps, dgc_ev["test_acc"]):
        ctx.log("dgc_eval", step=s_, test_acc=a_)
    summary = dict(
        n_params=n_params, n_workers=n, steps=total, phases=phases, dense_bytes_per_step=dense_bytes,
        dgc_bytes_per_step_final=dgc_bytes_final, compression_ratio=ratio, acc_dense=acc_dense, acc_dgc=acc_dgc,
        total_bytes_dense=float(cum_dense[-1]), total_bytes_dgc=float(cum_dgc[-1]),
        sent_over_k_min=float(rel_sent.min()), sent_over_k_max=float(rel_sent.max()),
        estimated_over_k_quantiles=np.quantile(rel_est[:, :, big], [0.05, 0.5, 0.95]).tolist() if big.any() else None,
        k_per_leaf=ks.tolist(), bookkeeping_max_abs=book,
        replica_spread_max=float(np.max(dgc_ev["replica_spread"])),
    )
    ctx.log("summary", **summary)
    _plot(ctx, dense, dgc_ev, dgc_steps, cum_dense, cum_dgc, cfg)

    return [
        Claim.at_least(
            "compression-ratio",
            f"after warm-up DGC at density {cfg['final_density']:g} sends >= 270x fewer bytes per step per worker than dense momentum SGD (values + int32 indices)",
            ratio, 270.0,
            note=f"dense {dense_bytes:.0f} B/step ({n_params} float32 params), DGC {dgc_bytes_final:.0f} B/step "
                 f"(message capacity floor(1.3k) per compressed leaf; leaves < {cfg['min_compress_size']} entries sent dense)",
        ),
        Claim.at_most(
            "accuracy-gap",
            "DGC's final test accuracy is at most 0.5 points below dense momentum SGD's",
            100.0 * (acc_dense - acc_dgc), 0.5,
            note=f"dense {100 * acc_dense:.2f}%, DGC {100 * acc_dgc:.2f}% on {len(test.y)} test images after {total} steps",
        ),
        Claim.at_least(
            "selected-count",
            "fraction of (step, worker, compressed leaf) after warm-up whose sent count lies in [0.8k, 1.3k]",
            in_range, 1.0,
            note=f"sent/k in [{rel_sent.min():.3f}, {rel_sent.max():.3f}]; k per leaf {ks.tolist()}",
        ),
        Claim.finding(
            "threshold-estimate",
            "fraction of (step, worker, leaf with k >= 100) whose count over the refined sampled threshold is in [0.8k, 1.3k] before the exact-top-k fallback",
            est_in_range,
            note="the rest exceeded 1.3k and were cut to the exact top-k; quantiles (5/50/95%) of estimated/k: "
                 + str(summary["estimated_over_k_quantiles"]),
        ),
        Claim.at_most(
            "bookkeeping-identity",
            "max |sent + residual - accumulated| over all steps, workers and entries",
            book, 1e-5,
        ),
        Claim.finding(
            "bytes",
            "bytes sent per worker: per step after warm-up and in total (dense vs DGC)",
            {"dense_per_step": dense_bytes, "dgc_per_step": dgc_bytes_final,
             "dense_total": float(cum_dense[-1]), "dgc_total": float(cum_dgc[-1])},
        ),
    ]


def _plot(ctx, dense, dgc_ev, dgc_steps, cum_dense, cum_dgc, cfg) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(dense.eval_steps, 100 * dense.evals["test_acc"], label="dense momentum SGD", color="tab:blue")
    a1.plot(dgc_steps, 100 * dgc_ev["test_acc"], label=f"DGC (density {cfg['final_density']:g} after warm-up)",
            color="tab:red")
    a1.set_xlabel("step")
    a1.set_ylabel("test accuracy (%)")
    a1.set_ylim(80, 100)
    a1.legend()
    a1.set_title(f"MNIST-5k, {cfg['n_workers']} workers")
    steps = np.arange(1, len(cum_dense) + 1)
    a2.semilogy(steps, cum_dense, label="dense", color="tab:blue")
    a2.semilogy(steps, cum_dgc, label="DGC", color="tab:red")
    a2.set_xlabel("step")
    a2.set_ylabel("cumulative bytes sent per worker")
    a2.legend()
    a2.set_title("communication (values + indices)")
    fig.tight_layout()
    ctx.savefig(fig, "accuracy_bytes.png", dpi=100)
