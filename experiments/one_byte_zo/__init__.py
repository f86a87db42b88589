"""Shared-randomness zeroth-order training with one byte per worker per step (docs/papers/one-byte-zo.md).

Papers: Malladi et al., "Fine-Tuning Language Models with Just Forward Passes"
(MeZO, NeurIPS 2023, SPSA Eq. 1 / Algorithm 1); Zelikman et al., "Just One Byte
(per gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning
Using Shared Randomness" (2023).
Command: ``lgrad run one-byte-zo --quick`` (``--full``: more samples and steps;
``--set backend=mesh`` runs the workers on a device mesh).
Expected: on linear regression (d = 100, 10^4 samples) the mean of the SPSA
estimates has cosine > 0.95 with the true gradient; 4 workers exchanging only their
projected gradients (keys per (step, worker, sample) via ``fold_in``) stay bitwise
identical after 500 steps; the 1-byte log code ends within 5% of the float32
exchange's final loss; each worker sends exactly 1 byte per step.

Training is the library's: :func:`lgrad.federated.worker_algorithm` running
:func:`lgrad.optim.mezo` (``gradient=False``: the rule calls the loss itself), so the
bytes counted are those of the transform users import. The cosine claim is a
measurement with the library's ``sample_key`` / ``perturb`` /
``spsa_projected_gradient``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lgrad import federated
from lgrad.data.synthetic import linear_regression
from lgrad.distributed import comm
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Choice, Float, Int
from lgrad.optim import mezo, perturb, sample_key, spsa_projected_gradient

NAME = "one-byte-zo"
PAPER = "Malladi et al. 2023 (MeZO) and Zelikman et al. 2023 (Just One Byte per gradient)"
DESCRIPTION = "4 workers, SPSA with shared randomness on linear regression: float32 vs 1-byte projected gradients."
EXPECTED = "cosine > 0.95; replicas bitwise identical after 500 steps; 1-byte within 5% of float; 1 byte/step/worker."
#: The claims' thresholds (never tuned after seeing a result).
CRITERIA = {
    "cosine_min": 0.95,  # cosine(mean SPSA estimate, true gradient)
    "relative_gap_max": 0.05,  # |final loss 1-byte - float| / float
    "bytes_per_sample": 1,  # 1-byte code: bytes per worker per step per SPSA sample
    "collective_calls": 1,  # collectives per worker per step
}

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
#: Input limits (keys not named here -- seed, n_samples, steps, learning_rate, eps --
#: take lgrad.engine.config.GENERIC_LIMITS).
LIMITS = {
    "dim": Int(min=1, max=10**6),
    "noise": Float(min=0),
    "n_workers": Int(min=1, max=256),
    "batch_per_worker": Int(min=1),
    "samples_per_worker": Int(min=1, max=1024),
    "codec_scale": Float(gt=0),
    "cosine_samples": Int(min=1, max=10**7),
    "backend": Choice("vmap", "mesh"),
}
#: Backend-equivalence probe: 8 workers on a small problem.
PROBE = dict(n_workers=8, n_samples=2000)


def check_config(cfg) -> None:
    """Constraints between keys."""
    if cfg["n_samples"] < cfg["n_workers"]:
        raise ValueError(f"n_samples={cfg['n_samples']} must be >= n_workers={cfg['n_workers']} (one row per worker at least)")


# ----------------------------------------------------------------------------- problem and data
def _problem(cfg):
    return linear_regression(cfg["n_samples"], dim=cfg["dim"], noise=cfg["noise"], seed=cfg["seed"])


def _full_loss(data):
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)

    def full_loss(p):
        r = x @ p["w"] - y
        return 0.5 * jnp.mean(r * r)

    return full_loss


def _loss(p, batch):
    xb, yb = batch
    r = xb @ p["w"] - yb
    return 0.5 * jnp.mean(r * r)


def _params0(cfg):
    return {"w": jnp.zeros((cfg["dim"],), jnp.float32)}


def _client_data(cfg, data):
    """Equal random shards (a permutation cut in n), placed for the backend."""
    n = cfg["n_workers"]
    perm = np.random.default_rng(cfg["seed"]).permutation(len(data.y))
    m = len(perm) // n
    parts = list(perm[: n * m].reshape(n, m))
    stacked = federated.stack_clients(parts, np.asarray(data.x, np.float32), np.asarray(data.y, np.float32))
    return federated.shard_workers(stacked, n_workers=n, backend=cfg["backend"])


# ----------------------------------------------------------------------------- training
def _algorithm(cfg, codec):
    tx = mezo(cfg["learning_rate"], eps=cfg["eps"], num_samples=cfg["samples_per_worker"], seed=cfg["seed"] + 1,
              axis_name="workers", codec=codec, codec_scale=cfg["codec_scale"])
    return federated.worker_algorithm(tx, _loss, n_workers=cfg["n_workers"], batch_size=cfg["batch_per_worker"],
                                      gradient=False, backend=cfg["backend"])


def _round_step(alg, data, key, full_loss):
    """``run_loop`` step: one round keyed by ``fold_in(key, round)``; metric: the
    full-data loss of replica 0 after the round and the bytes each worker sent."""

    def step(state):
        state, met = alg.round(state, data, jax.random.fold_in(key, state.round))
        p0 = jax.tree.map(lambda a: a[0], state.params)
        return state, {"loss": full_loss(p0), "bytes": met["bytes_sent"]}

    return step


def _collective_calls(alg, state, data) -> int:
    """Collectives one worker issues per round (counted while tracing one round)."""
    with comm.counting() as sent:
        jax.eval_shape(alg.round, state, data, jax.random.PRNGKey(0))
    return sent.calls


def _train(cfg, codec, data, full_loss, progress=None, steps=None):
    alg = _algorithm(cfg, codec)
    state = alg.init(jax.random.PRNGKey(0), _params0(cfg))
    calls = _collective_calls(alg, state, data)
    step = _round_step(alg, data, jax.random.PRNGKey(cfg["seed"] + 2), full_loss)
    res = run_loop(step, state, steps=cfg["steps"] if steps is None else steps, progress=progress)
    return res, alg.traffic["bytes_sent"], calls


def backend_probe(config: dict, backend: str, rounds: int = 3) -> dict[str, np.ndarray]:
    """``rounds`` rounds of both codecs exactly as :func:`measure` trains them, on
    ``backend``: final parameters and per-round metrics as numpy arrays."""
    cfg = dict(config, backend=backend)
    problem = _problem(cfg)
    data, full_loss = _client_data(cfg, problem), _full_loss(problem)
    out: dict[str, np.ndarray] = {}
    for codec in ("float", "one_byte"):
        res, _, _ = _train(cfg, codec, data, full_loss, steps=rounds)
        out[f"{codec}/params/w"] = np.asarray(res.state.params["w"])
        out |= {f"{codec}/{k}": np.asarray(v) for k, v in res.history.items()}
    return out


# ----------------------------------------------------------------------------- measurements
def _cosine_curve(cfg, full_loss):
    """Cosine of the mean of the first c SPSA estimates (the protocol's keys of step 0)
    with the true gradient at w0, for growing c."""
    n, params0 = cfg["n_workers"], _params0(cfg)
    true_g = np.asarray(jax.grad(full_loss)(params0)["w"], np.float64)
    base = jax.random.PRNGKey(cfg["seed"] + 100)

    @jax.jit
    def estimates(idx):
        def one(i):
            k = sample_key(base, 0, i % n, i // n)
            pg = spsa_projected_gradient(full_loss, params0, k, cfg["eps"])
            return perturb(jax.tree.map(jnp.zeros_like, params0), k, pg)["w"]

        return jax.lax.map(one, idx)

    est = np.asarray(estimates(jnp.arange(cfg["cosine_samples"])), np.float64)
    cos = lambda a: float(a @ true_g / (np.linalg.norm(a) * np.linalg.norm(true_g)))  # noqa: E731
    counts = [c for c in (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536) if c <= len(est)]
    return cos(est.mean(0)), counts, [cos(est[:c].mean(0)) for c in counts]


def _summarise(cfg, res, bytes_sent, calls) -> dict[str, Any]:
    w = np.asarray(res.state.params["w"])
    return dict(
        loss=np.asarray(res.history["loss"]), final=float(res.history["loss"][-1]),
        identical=all(w[i].tobytes() == w[0].tobytes() for i in range(cfg["n_workers"])),
        bytes_per_step=float(bytes_sent), bytes_history_max=float(np.max(res.history["bytes"])), calls=calls,
        skipped=int(np.asarray(res.state.opt_state[0].skipped).max()),
    )


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    cfg = config
    check_config(cfg)
    problem = _problem(cfg)
    full_loss = _full_loss(problem)
    mean_cos, counts, cos_curve = _cosine_curve(cfg, full_loss)
    ctx.log("cosine", counts=counts, cosine=cos_curve)
    data = _client_data(cfg, problem)
    runs = {}
    for codec in ctx.progress(("float", "one_byte"), total=2, desc="codecs"):
        res, bytes_sent, calls = _train(cfg, codec, data, full_loss, progress=ctx.progress)
        runs[codec] = _summarise(cfg, res, bytes_sent, calls)
        ctx.log_history(codec, {"loss": res.history["loss"]}, every=5)
    lstsq = np.linalg.lstsq(problem.x, problem.y, rcond=None)[0]
    floor = float(full_loss({"w": jnp.asarray(lstsq, jnp.float32)}))
    init = float(full_loss(_params0(cfg)))
    ctx.log("summary", mean_cosine=mean_cos, init_loss=init, least_squares_loss=floor, backend=cfg["backend"],
            **{f"{c}_{k}": v for c, r in runs.items() for k, v in r.items() if k != "loss"})
    _plot(ctx, runs, counts, cos_curve, floor, cfg["n_workers"])
    return {
        "mean_cosine": mean_cos, "cosine_counts": counts, "cosine_curve": cos_curve, "init_loss": init,
        "least_squares_loss": floor, "runs": {k: {m: v for m, v in r.items() if m != "loss"} for k, r in runs.items()},
    }


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    cfg, m, runs = config, measurements, measurements["runs"]
    mean_cos, counts, cos_curve = m["mean_cosine"], m["cosine_counts"], m["cosine_curve"]
    init, floor = m["init_loss"], m["least_squares_loss"]
    rel = abs(runs["one_byte"]["final"] - runs["float"]["final"]) / runs["float"]["final"]
    c, n, S = CRITERIA, cfg["n_workers"], cfg["samples_per_worker"]
    one = runs["one_byte"]
    return [
        Claim.at_least(
            "spsa-cosine",
            f"cosine(mean of {cfg['cosine_samples']} SPSA estimates, true gradient) on linear regression "
            f"(d={cfg['dim']}, {cfg['n_samples']} samples)",
            mean_cos, c["cosine_min"],
            note=f"cosine vs number of averaged estimates: {dict(zip(counts, np.round(cos_curve, 4).tolist()))}",
        ),
        Claim.holds(
            "bitwise-identical",
            f"{n} workers' parameters are bitwise identical after {cfg['steps']} steps (float and 1-byte exchange)",
            {k: r["identical"] for k, r in runs.items()}, "all replicas equal byte for byte",
            all(r["identical"] for r in runs.values()),
            note=f"backend {cfg['backend']}; skipped (non-finite) steps: {({k: r['skipped'] for k, r in runs.items()})}",
        ),
        Claim.at_most(
            "one-byte-vs-float",
            "relative gap of the 1-byte run's final full-data loss to the float32 run's",
            rel, c["relative_gap_max"],
            note=f"final loss float {runs['float']['final']:.5g}, 1-byte {one['final']:.5g} "
                 f"(start {init:.4g}, least squares {floor:.5g}); code scale {cfg['codec_scale']}",
        ),
        Claim.holds(
            "bytes-per-step",
            "bytes sent per worker per step with the 1-byte code (every collective of the step counted)",
            one["bytes_per_step"], f"== {c['bytes_per_sample'] * S} ({c['bytes_per_sample']} per sample)",
            one["bytes_per_step"] == c["bytes_per_sample"] * S and one["calls"] == c["collective_calls"],
            note=f"{one['calls']} collective call(s) per step; the float32 exchange sends "
                 f"{runs['float']['bytes_per_step']:.0f} bytes",
        ),
    ]


def _plot(ctx, runs, counts, cos_curve, floor, n_workers) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for codec, color in (("float", "tab:blue"), ("one_byte", "tab:red")):
        r = runs[codec]
        a1.semilogy(np.arange(1, len(r["loss"]) + 1), r["loss"], color=color,
                    label=f"{codec} ({r['bytes_per_step']:.0f} B/step/worker)")
    a1.axhline(floor, color="k", ls=":", lw=0.8, label="least-squares loss")
    a1.set_xlabel("step")
    a1.set_ylabel("full-data loss (replica 0)")
    a1.set_title(f"{n_workers} workers, shared-randomness SPSA")
    a1.legend()
    a2.semilogx(counts, cos_curve, "o-")
    a2.axhline(CRITERIA["cosine_min"], color="k", ls=":", lw=0.8)
    a2.set_xlabel("SPSA estimates averaged")
    a2.set_ylabel("cosine with the true gradient")
    a2.set_title("direction of the mean SPSA estimate (d=100)")
    fig.tight_layout()
    ctx.savefig(fig, "loss_cosine.png", dpi=100)
