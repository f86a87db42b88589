"""Shared-randomness zeroth-order training with one byte per worker per step (PAPERS.md B3).

Papers: Malladi et al., "Fine-Tuning Language Models with Just Forward Passes"
(MeZO, NeurIPS 2023, SPSA Eq. 1 / Algorithm 1); Zelikman et al., "Just One Byte
(per gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning
Using Shared Randomness" (2023).
Command: ``lgrad run one-byte-zo --quick`` (``--full``: more samples and steps).
Expected: on linear regression (d = 100, 10^4 samples) the mean of the SPSA
estimates has cosine > 0.95 with the true gradient; 4 workers exchanging only their
projected gradients (keys per (step, worker, sample) via ``fold_in``) stay bitwise
identical after 500 steps; the 1-byte log code ends within 5% of the float32
exchange's final loss; each worker sends exactly 1 byte per step.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.data.synthetic import linear_regression
from lgrad.distributed import comm, make_program
from lgrad.engine import Claim, RunContext, run_loop
from lgrad.optim.zeroth_order import mezo, perturb, sample_key, spsa_projected_gradient

NAME = "one-byte-zo"
PAPER = "Malladi et al. 2023 (MeZO) and Zelikman et al. 2023 (Just One Byte per gradient)"
DESCRIPTION = "4 workers, SPSA with shared randomness on linear regression: float32 vs 1-byte projected gradients."
EXPECTED = "cosine > 0.95; replicas bitwise identical after 500 steps; 1-byte within 5% of float; 1 byte/step/worker."

CONFIGS = {
    "quick": dict(
        seed=0, n_samples=10000, dim=100, noise=0.1, n_workers=4, batch_per_worker=64, steps=500,
        learning_rate=0.02, eps=1e-3, samples_per_worker=1, codec_scale=0.1, cosine_samples=4096, backend="vmap",
    ),
    "full": dict(
        seed=0, n_samples=10000, dim=100, noise=0.1, n_workers=4, batch_per_worker=64, steps=2000,
        learning_rate=0.02, eps=1e-3, samples_per_worker=1, codec_scale=0.1, cosine_samples=65536, backend="vmap",
    ),
}
SMOKE = dict(n_samples=2000, steps=40, cosine_samples=256)


def run(config: dict[str, Any], ctx: RunContext) -> list[Claim]:
    cfg = config
    n, bsz, S = cfg["n_workers"], cfg["batch_per_worker"], cfg["samples_per_worker"]
    data = linear_regression(cfg["n_samples"], dim=cfg["dim"], noise=cfg["noise"], seed=cfg["seed"])
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    d = cfg["dim"]

    def full_loss(p):
        r = x @ p["w"] - y
        return 0.5 * jnp.mean(r * r)

    params0 = {"w": jnp.zeros((d,), jnp.float32)}

    # ---- 1. direction of the mean SPSA estimate on the full-data loss -----------------
    true_g = jax.grad(full_loss)(params0)["w"]
    base = jax.random.PRNGKey(cfg["seed"] + 100)

    @jax.jit
    def estimates(idx):
        def one(i):
            k = sample_key(base, 0, i % n, i // n)  # the protocol's keys of step 0
            pg = spsa_projected_gradient(full_loss, params0, k, cfg["eps"])
            return perturb({"w": jnp.zeros((d,))}, k, pg)["w"]

        return jax.lax.map(one, idx)

    est = np.asarray(estimates(jnp.arange(cfg["cosine_samples"])), np.float64)
    tg = np.asarray(true_g, np.float64)
    cos = lambda a: float(a @ tg / (np.linalg.norm(a) * np.linalg.norm(tg)))  # noqa: E731
    mean_cos = cos(est.mean(0))
    counts = [c for c in (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536) if c <= len(est)]
    cos_curve = [cos(est[:c].mean(0)) for c in counts]
    ctx.log("cosine", counts=counts, cosine=cos_curve)

    # ---- 2. 4-worker training, float vs 1-byte exchange ------------------------------
    perm = np.random.default_rng(cfg["seed"]).permutation(len(data.y))
    m = len(perm) // n
    xs = jnp.asarray(data.x[perm[: n * m]].reshape(n, m, d))
    ys = jnp.asarray(data.y[perm[: n * m]].reshape(n, m))

    def train(codec: str):
        tx = mezo(cfg["learning_rate"], eps=cfg["eps"], num_samples=S, seed=cfg["seed"] + 1, axis_name="workers",
                  codec=codec, codec_scale=cfg["codec_scale"])
        bytes_box: dict[str, int] = {}

        def worker(p, s, xw, yw, key):
            idx = jax.random.randint(key, (bsz,), 0, m)
            xb, yb = xw[idx], yw[idx]

            def loss_fn(q):
                r = xb @ q["w"] - yb
                return 0.5 * jnp.mean(r * r)

            with comm.counting() as sent:
                upd, s = tx.update(None, s, p, loss_fn=loss_fn)
                p = optax.apply_updates(p, upd)
            bytes_box["bytes"], bytes_box["calls"] = sent.bytes, sent.calls
            return p, s, {"bytes": jnp.asarray(sent.bytes, jnp.float32)}

        prog = make_program(worker, n_workers=n, backend=cfg["backend"], in_axes=(0, 0, 0, 0, 0))
        data_key = jax.random.PRNGKey(cfg["seed"] + 2)

        def step(c):
            p, s, t = c
            keys = jax.random.split(jax.random.fold_in(data_key, t), n)
            p, s, met = prog(p, s, xs, ys, keys)
            return (p, s, t + 1), {"loss": full_loss(jax.tree.map(lambda a: a[0], p)), "bytes": met["bytes"][0]}

        rep = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), t)  # noqa: E731
        carry = (rep(params0), jax.vmap(tx.init)(rep(params0)), jnp.zeros([], jnp.int32))
        res = run_loop(step, carry, steps=cfg["steps"], progress=ctx.progress)
        return res, dict(bytes_box)

    runs = {}
    for codec in ctx.progress(("float", "one_byte"), total=2, desc="codecs"):
        res, counted = train(codec)
        w = np.asarray(res.state[0]["w"])
        identical = all(w[i].tobytes() == w[0].tobytes() for i in range(n))
        runs[codec] = dict(
            loss=np.asarray(res.history["loss"]), final=float(res.history["loss"][-1]), identical=identical,
            bytes_per_step=float(res.history["bytes"][0]), calls=counted.get("calls"),
            skipped=int(np.asarray(res.state[1].skipped).max()),
        )
        ctx.log_history(codec, {"loss": res.history["loss"]}, every=5)
    floor = float(full_loss({"w": jnp.asarray(np.linalg.lstsq(data.x, data.y, rcond=None)[0])}))
    init = float(full_loss(params0))
    rel = abs(runs["one_byte"]["final"] - runs["float"]["final"]) / runs["float"]["final"]
    ctx.log("summary", mean_cosine=mean_cos, init_loss=init, least_squares_loss=floor,
            **{f"{c}_{k}": v for c, r in runs.items() for k, v in r.items() if k != "loss"})
    _plot(ctx, runs, counts, cos_curve, floor)

    return [
        Claim.at_least(
            "spsa-cosine",
            f"cosine(mean of {len(est)} SPSA estimates, true gradient) on linear regression (d={d}, {cfg['n_samples']} samples)",
            mean_cos, 0.95,
            note=f"cosine vs number of averaged estimates: {dict(zip(counts, np.round(cos_curve, 4).tolist()))}",
        ),
        Claim.holds(
            "bitwise-identical",
            f"{n} workers' parameters are bitwise identical after {cfg['steps']} steps (float and 1-byte exchange)",
            {c: r["identical"] for c, r in runs.items()}, "all replicas equal byte for byte",
            all(r["identical"] for r in runs.values()),
            note=f"backend {cfg['backend']}; skipped (non-finite) steps: {({c: r['skipped'] for c, r in runs.items()})}",
        ),
        Claim.at_most(
            "one-byte-vs-float",
            "relative gap of the 1-byte run's final full-data loss to the float32 run's",
            rel, 0.05,
            note=f"final loss float {runs['float']['final']:.5g}, 1-byte {runs['one_byte']['final']:.5g} "
                 f"(start {init:.4g}, least squares {floor:.5g}); code scale {cfg['codec_scale']}",
        ),
        Claim.holds(
            "bytes-per-step",
            "bytes sent per worker per step with the 1-byte code (every collective of the step counted)",
            runs["one_byte"]["bytes_per_step"], f"== {S} (1 per sample)",
            runs["one_byte"]["bytes_per_step"] == S and runs["one_byte"]["calls"] == 1,
            note=f"{runs['one_byte']['calls']} collective call(s) per step; the float32 exchange sends "
                 f"{runs['float']['bytes_per_step']:.0f} bytes",
        ),
    ]


def _plot(ctx, runs, counts, cos_curve, floor) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for codec, color in (("float", "tab:blue"), ("one_byte", "tab:red")):
        r = runs[codec]
        a1.semilogy(np.arange(1, len(r["loss"]) + 1), r["loss"], color=color,
                    label=f"{codec} ({r['bytes_per_step']:.0f} B/step/worker)")
    a1.axhline(floor, color="k", ls=":", lw=0.8, label="least-squares loss")
    a1.set_xlabel("step")
    a1.set_ylabel("full-data loss (replica 0)")
    a1.set_title("4 workers, shared-randomness SPSA")
    a1.legend()
    a2.semilogx(counts, cos_curve, "o-")
    a2.axhline(0.95, color="k", ls=":", lw=0.8)
    a2.set_xlabel("SPSA estimates averaged")
    a2.set_ylabel("cosine with the true gradient")
    a2.set_title("direction of the mean SPSA estimate (d=100)")
    fig.tight_layout()
    ctx.savefig(fig, "loss_cosine.png", dpi=100)
