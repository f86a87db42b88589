"""Deep Gradient Compression vs dense momentum SGD on MNIST-5k (docs/papers/dgc-compression.md).

Paper: Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing the
Communication Bandwidth for Distributed Training", ICLR 2018 (Algorithm 1,
Sections 3.2-3.3, Table 1-2 style compression ratios).
Command: ``lgrad run dgc-compression --quick`` (``--full``: 8 workers, a wider MLP,
more epochs; ``--set backend=mesh`` runs the workers on a device mesh).
Expected: with n workers training a 784-H-10 MLP, DGC at 0.1% density (after the
paper's warm-up 25%, 6.25%, 1.56%, 0.39%, 0.1%) sends >= 270x fewer bytes per step
than dense momentum SGD (values + int32 indices counted by ``lgrad.distributed.comm``)
and ends within 0.5 accuracy points of it; the sampled threshold selects between
0.8k and 1.3k entries; sent + residual equals the accumulated momentum to 1e-5.

Training is the library's: both runs are :func:`lgrad.federated.worker_algorithm`
rounds, dense with ``optax.chain(federated.mean_over_workers(), optax.sgd(lr,
momentum))`` and DGC with :func:`lgrad.optim.dgc` itself (one algorithm per warm-up
density, sharing one state; ``track_bookkeeping=True``), so the bytes and the
accuracy measured here are those of the transform users import. The threshold
sampling is seeded with DGC's ``seed`` option (``seed + 7``, folded with the step and
the worker index as before the port), injected with ``optax.inject_hyperparams`` so
that it lives in the state.

Seeds: every run trains ``n_seeds`` = 3 seeds (test split, worker partition, init,
minibatch order and DGC's sampling seed all follow the seed), batched: the seeds'
data, states and keys are stacked and one ``jax.vmap``-ed program per run (dense, and
DGC per warm-up density) trains them all, with the same random streams as separate
runs. The accuracy gap is the seed mean with its spread in ``measured`` (the paper
reports single runs); the bytes, selected-count and bookkeeping claims take the
worst seed.

Contract and budget (issues 23/24): ``measure`` trains and returns per seed the small
numbers the claims read (bytes, accuracies, per-leaf histograms of the sent and
estimated counts, bookkeeping); ``claims`` computes every verdict from them and
CRITERIA alone. Each run_loop call compiles one scan (all whole eval periods in one
chunk); the data and test set are passed in the loop's carry, not embedded in the
programs as constants. Numbers before/after (seed batching: the same verdicts, DGC's
accuracies moved by 1-3 test images through float rounding): docs/papers/dgc-compression.md.

History (kept for honesty): a first quick config (hidden 1024, 20 epochs, lr 0.05)
left dense momentum SGD undertrained (94.1% test accuracy) and DGC 0.7 points
behind it, failing the 0.5-point claim. The current quick config trains both to
convergence (hidden 512, 40 epochs, lr 0.1); the criterion itself never changed.
The paper's claim is about converged training, but at this scale the accuracy gap
depends on the training budget.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgrad import federated
from lgrad.data import mnist5k, train_test_split
from lgrad.distributed import comm, place, worker_mesh
from lgrad.distributed.partition import iid
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Choice, Float, Int
from lgrad.optim import dgc, leaf_budget, warmup_phases

NAME = "dgc-compression"
PAPER = "Lin et al. 2018, Deep Gradient Compression (ICLR)"
DESCRIPTION = "n-worker MLP on MNIST-5k: dense momentum SGD vs DGC at 0.1% density (bytes counted, indices included)."
EXPECTED = ">= 270x fewer bytes than dense, test accuracy within 0.5 points, selected count in [0.8k, 1.3k]."
#: The claims' thresholds (never tuned after seeing a result).
CRITERIA = {
    "compression_ratio_min": 270.0,  # dense bytes / DGC bytes per step after warm-up
    "accuracy_gap_max_points": 0.5,  # dense - DGC test accuracy
    "count_low": 0.8,  # sent / k must lie in [count_low, count_high]
    "count_high": 1.3,
    "selected_fraction_min": 1.0,  # fraction of (step, worker, leaf) in range
    "bookkeeping_max": 1e-5,  # max |sent + residual - accumulated|
    "estimate_min_k": 100,  # leaves where a 1% sample can estimate the threshold
}

CONFIGS = {
    "quick": dict(
        seed=0, n_workers=4, hidden=512, batch_per_worker=32, epochs=40, learning_rate=0.1, momentum=0.9,
        final_density=0.001, schedule="paper", min_compress_size=100, eval_every=31, test_fraction=0.2,
        backend="vmap", n_seeds=3,
    ),
    "full": dict(
        seed=0, n_workers=8, hidden=2048, batch_per_worker=32, epochs=60, learning_rate=0.1, momentum=0.9,
        final_density=0.001, schedule="paper", min_compress_size=100, eval_every=15, test_fraction=0.2,
        backend="vmap", n_seeds=3,
    ),
}
SMOKE = dict(hidden=64, epochs=2, batch_per_worker=125, eval_every=4, final_density=0.25, n_seeds=1)
#: Input limits (keys not named here -- seed, epochs, learning_rate, momentum,
#: eval_every -- take lgrad.engine.config.GENERIC_LIMITS).
LIMITS = {
    "n_workers": Int(min=1, max=256),
    "hidden": Int(min=1, max=65536),
    "batch_per_worker": Int(min=1, max=4000),
    "final_density": Float(gt=0, max=1),
    "schedule": Choice("paper", "code"),
    "min_compress_size": Int(min=0),
    "test_fraction": Float(gt=0, lt=1),
    "backend": Choice("vmap", "mesh"),
    "n_seeds": Int(min=1, max=20),
}
#: Backend-equivalence probe: 8 workers, a small MLP, a density every leaf can take.
PROBE = dict(n_workers=8, hidden=32, batch_per_worker=16, final_density=0.25, n_seeds=1)




def check_config(cfg) -> None:
    """Constraints between keys: every compressed leaf keeps k = round(density * size) >= 1."""
    sizes = (784 * cfg["hidden"], cfg["hidden"], 10 * cfg["hidden"], 10)
    smallest = min((s for s in sizes if s >= cfg["min_compress_size"]), default=None)
    if smallest is not None and round(cfg["final_density"] * smallest) < 1:
        raise ValueError(
            f"final_density={cfg['final_density']} selects 0 entries of a {smallest}-entry leaf (hidden={cfg['hidden']}); "
            f"raise final_density or set min_compress_size > {smallest} (now {cfg['min_compress_size']})"
        )


# ----------------------------------------------------------------------------- model and data
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


def _loss(p, batch):
    x, y = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y))


def _data(cfg):
    """One seed's IID worker shards (host arrays), its test set, steps per epoch."""
    train, test = train_test_split(mnist5k(), cfg["test_fraction"], seed=cfg["seed"])
    parts = iid(train.y, cfg["n_workers"], seed=cfg["seed"])
    data = federated.stack_clients(parts, train.x.astype(np.float32), train.y.astype(np.int32))
    steps_per_epoch = max(1, min(len(p) for p in parts) // cfg["batch_per_worker"])
    return data, (np.asarray(test.x), np.asarray(test.y)), steps_per_epoch


def _seed_cfgs(config) -> list[dict]:
    return [dict(config, seed=config["seed"] + k) for k in range(config["n_seeds"])]


def _stack(trees: list) -> Any:
    """The trees stacked on a new leading seed axis."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _place(tree, cfg):
    """For ``backend="mesh"``: seed-stacked leaves with a worker axis split over the
    mesh on their second axis (``P(None, workers)``), the rest replicated."""
    if cfg["backend"] == "vmap":
        return tree
    mesh = worker_mesh(cfg["n_workers"], comm.AXIS)
    spec = lambda a: P(None, comm.AXIS) if jnp.ndim(a) >= 2 else P()  # noqa: E731
    return jax.tree.map(lambda a: place(a, NamedSharding(mesh, spec(a))), tree)


def _seed_data(cfgs):
    """Every seed's shards and test set stacked on a leading seed axis; steps per epoch."""
    per_seed = [_data(c) for c in cfgs]
    steps = {s for _, _, s in per_seed}
    shapes = {jax.tree.map(np.shape, (d, t)).__repr__() for d, t, _ in per_seed}
    if len(steps) != 1 or len(shapes) != 1:
        raise ValueError(f"seeds must give equal shard/test shapes to be batched, got {sorted(shapes)}")
    data = _place(_stack([d for d, _, _ in per_seed]), cfgs[0])
    return data, _stack([t for _, t, _ in per_seed]), steps.pop()


# ----------------------------------------------------------------------------- algorithms
def _dense_algorithm(cfg):
    """Synchronous data-parallel momentum SGD: all-reduce of the gradients, then optax.sgd."""
    tx = optax.chain(federated.mean_over_workers(), optax.sgd(cfg["learning_rate"], momentum=cfg["momentum"]))
    return federated.worker_algorithm(tx, _loss, n_workers=cfg["n_workers"], batch_size=cfg["batch_per_worker"],
                                      backend=cfg["backend"])


def _dgc_algorithm(cfg, density):
    """lgrad.optim.dgc at ``density`` (its state does not depend on the density). The
    sampling seed ``seed + 7`` is injected (``optax.inject_hyperparams``): it lives in
    the state, so one program serves every seed of a batch."""
    tx = optax.inject_hyperparams(dgc, static_args=("learning_rate", "density", "momentum", "min_compress_size"))(
        cfg["learning_rate"], density, momentum=cfg["momentum"], min_compress_size=cfg["min_compress_size"],
        seed=cfg["seed"] + 7, track_bookkeeping=True)
    return federated.worker_algorithm(tx, _loss, n_workers=cfg["n_workers"], batch_size=cfg["batch_per_worker"],
                                      backend=cfg["backend"])


def _dgc_state(opt_state):
    """The DGCState inside ``inject_hyperparams(dgc)``'s state."""
    return opt_state.inner_state[0]


class _Carry(NamedTuple):
    """``run_loop``'s carry: the seed-stacked training state and inputs. The data, test
    set and minibatch keys travel as arguments, not closure constants, so the compiled
    programs do not embed them (~47 MB of constants per program in the quick config)."""

    state: Any
    data: Any
    test: Any
    keys: jax.Array


def _round_step(alg, density=None):
    """``run_loop`` step over the seed axis (``jax.vmap``): per seed one round keyed by
    ``fold_in(key, round)``; for DGC also the per-worker diagnostics read from the
    transform's state. Every output has a leading seed axis."""

    def one(state, d, key):
        state, met = alg.round(state, d, jax.random.fold_in(key, state.round))
        out = {"loss": met["loss"], "bytes": met["bytes_sent"]}
        if density is not None:
            s = _dgc_state(state.opt_state)
            out |= {"sent": s.sent, "estimated": s.estimated, "bookkeeping": jnp.max(s.bookkeeping),
                    "density": jnp.asarray(density, jnp.float32)}
        return state, out

    batched = jax.vmap(one)

    def step(c: _Carry):
        state, out = batched(c.state, c.data, c.keys)
        return c._replace(state=state), out

    return step


def _evaluate_one(state, xt, yt):
    p = jax.tree.map(lambda a: a[0], state.params)
    acc = jnp.mean(jnp.argmax(_logits(p, xt), -1) == yt)
    spread = sum(jnp.max(jnp.abs(a - a[0])) for a in jax.tree.leaves(state.params))
    return {"test_acc": acc, "replica_spread": spread}


def _evaluate(c: _Carry):
    """Per seed (``jax.vmap``): worker 0's test accuracy and the largest replica spread."""
    return jax.vmap(_evaluate_one)(c.state, *c.test)


def _params0(cfg):
    return _init_mlp(jax.random.PRNGKey(cfg["seed"]), cfg["hidden"])


def _data_key(cfg):
    return jax.random.PRNGKey(cfg["seed"] + 1)  # the same minibatch order for dense and DGC


def _inputs(cfgs) -> tuple[_Carry, int]:
    """The seed-stacked data, test set and minibatch keys (a carry without state); steps per epoch."""
    data, test, steps_per_epoch = _seed_data(cfgs)
    return _Carry(None, data, test, _stack([_data_key(c) for c in cfgs])), steps_per_epoch


def _init(make_alg, cfgs):
    """Every seed's initial state (its own init and, for DGC, sampling seed), stacked."""
    return _place(_stack([make_alg(c).init(jax.random.PRNGKey(0), _params0(c)) for c in cfgs]), cfgs[0])


# ----------------------------------------------------------------------------- training
def _one_chunk(steps: int, every: int) -> int:
    """run_loop's chunk: all whole eval periods in one compiled scan (one compile per
    loop instead of one per ~500-step chunk plus the tail; the same steps and evals)."""
    return every * max(1, steps // every)


def _train_dense(cfgs, inputs, total, ctx):
    """Dense momentum SGD on every seed at once (one program, the seed axis batched);
    ``inputs``: a :class:`_Carry` without state."""
    cfg = cfgs[0]
    alg = _dense_algorithm(cfg)
    carry = inputs._replace(state=_init(_dense_algorithm, cfgs))
    res = run_loop(_round_step(alg), carry, steps=total, eval_fn=_evaluate,
                   eval_every=cfg["eval_every"], chunk_size=_one_chunk(total, cfg["eval_every"]), progress=ctx.progress)
    return res, alg.traffic["bytes_sent"]


def _train_dgc(cfgs, inputs, phases, ctx):
    """One run_loop segment per warm-up density, every seed batched; the state flows
    through all of them."""
    cfg, done, traffic = cfgs[0], 0, {}
    carry = inputs._replace(state=_init(lambda c: _dgc_algorithm(c, phases[0][1]), cfgs))
    hist, evals, eval_steps = [], [], []
    for n_steps, density in phases:
        alg = _dgc_algorithm(cfg, density)  # its seed argument is unused: the state's seeds are
        every = min(cfg["eval_every"], n_steps)
        res = run_loop(_round_step(alg, density), carry, steps=n_steps, eval_fn=_evaluate,
                       eval_every=every, chunk_size=_one_chunk(n_steps, every), start_step=done, progress=ctx.progress)
        carry = res.state
        traffic[density] = alg.traffic["bytes_sent"]
        hist.append(res.history | {"phase_density": np.full((n_steps, len(cfgs)), density)})
        evals.append(res.evals)
        eval_steps.append(res.eval_steps)
        done += n_steps
    cat = lambda key_, ds: np.concatenate([d[key_] for d in ds], axis=0)  # noqa: E731
    return ({k: cat(k, hist) for k in hist[0]}, {k: cat(k, evals) for k in evals[0]}, np.concatenate(eval_steps),
            traffic)


def backend_probe(config: dict, backend: str, rounds: int = 3, seed_index: int = 0) -> dict[str, np.ndarray]:
    """``rounds`` rounds of the dense and the DGC algorithm (first warm-up density)
    exactly as :func:`measure` builds them (seeds batched), on ``backend``: seed
    ``seed_index``'s final parameters and per-round metrics as numpy arrays (for the
    vmap-vs-mesh and batched-vs-alone tests)."""
    cfgs = _seed_cfgs(dict(config, backend=backend))
    inputs, steps_per_epoch = _inputs(cfgs)
    density = warmup_phases(rounds, steps_per_epoch, final_density=cfgs[0]["final_density"],
                            schedule=cfgs[0]["schedule"])[0][1]
    out: dict[str, np.ndarray] = {}
    for name, make, dens in (("dense", _dense_algorithm, None), ("dgc", lambda c: _dgc_algorithm(c, density), density)):
        res = run_loop(_round_step(make(cfgs[0]), dens), inputs._replace(state=_init(make, cfgs)), steps=rounds)
        out |= {f"{name}/params/{k}": np.asarray(v)[seed_index] for k, v in res.state.state.params.items()}
        out |= {f"{name}/{k}": np.asarray(v)[:, seed_index] for k, v in res.history.items()}
    return out


# ----------------------------------------------------------------------------- run
def _seed_slice(tree, k: int):
    """Seed ``k`` of a history/evals dict (seed axis second: ``(steps, seeds, ...)``)."""
    return {name: np.asarray(v)[:, k] for name, v in tree.items()}


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Train every seed (split, partition, init, minibatches, sampling follow the seed)
    in one batched program per run; per seed the small numbers the claims read (see
    :func:`claims`)."""
    check_config(config)
    cfgs = _seed_cfgs(config)
    inputs, steps_per_epoch = _inputs(cfgs)
    total = config["epochs"] * steps_per_epoch
    dense, dense_bytes = _train_dense(cfgs, inputs, total, ctx)
    phases = warmup_phases(total, steps_per_epoch, final_density=config["final_density"], schedule=config["schedule"])
    dgc_h, dgc_ev, dgc_steps, dgc_traffic = _train_dgc(cfgs, inputs, phases, ctx)
    seeds = []
    for k, cfg in enumerate(cfgs):
        d = _SeedRun(_seed_slice(dense.history, k), _seed_slice(dense.evals, k), np.asarray(dense.eval_steps))
        h, ev = _seed_slice(dgc_h, k), _seed_slice(dgc_ev, k)
        m = _measure(cfg, d, dense_bytes, h, ev, dgc_traffic)
        m.update(phases=[[int(n), float(dd)] for n, dd in phases], steps=int(total),
                 n_test=int(inputs.test[1].shape[1]), seed=int(cfg["seed"]))
        _log(ctx, cfg, d, h, ev, dgc_steps, m)
        if k == 0:
            cum = lambda b: np.cumsum(b.astype(np.float64))  # noqa: E731
            _plot(ctx, d, ev, dgc_steps, cum(d.history["bytes"]), cum(h["bytes"]), cfg)
        seeds.append(m)
    return {"seeds": seeds}


class _SeedRun(NamedTuple):
    """One seed's dense run (the fields of run_loop's result that are read)."""

    history: dict
    evals: dict
    eval_steps: np.ndarray


def _measure(cfg, dense, dense_bytes, dgc_h, dgc_ev, dgc_traffic) -> dict[str, Any]:
    params0 = _params0(cfg)
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params0)]
    final_phase = dgc_h["phase_density"] == cfg["final_density"]
    if not final_phase.any():  # too short to finish the warm-up: measure the last phase
        final_phase = dgc_h["phase_density"] == dgc_h["phase_density"][-1]
    final_density = float(dgc_h["phase_density"][-1])
    comp = [i for i, s in enumerate(sizes) if s >= cfg["min_compress_size"]]
    ks = [int(leaf_budget(sizes[i], final_density)[0]) for i in comp]
    sent = dgc_h["sent"][final_phase][:, :, comp]  # (steps, workers, leaves) entries sent
    est = dgc_h["estimated"][final_phase][:, :, comp]  # entries over the refined threshold
    return dict(
        n_params=sum(sizes), dense_bytes=int(dense_bytes), dgc_bytes_final=int(dgc_traffic[final_density]),
        acc_dense=float(dense.evals["test_acc"][-1]), acc_dgc=float(dgc_ev["test_acc"][-1]), ks=ks,
        # per compressed leaf after warm-up: the distinct counts over (step, worker) and how often each occurs
        sent_counts=[_histogram(sent[:, :, j]) for j in range(len(ks))],
        estimated_counts=[_histogram(est[:, :, j]) for j in range(len(ks))],
        book=float(np.max(dgc_h["bookkeeping"])), replica_spread_max=float(np.max(dgc_ev["replica_spread"])),
        dense_total=float(np.sum(dense.history["bytes"].astype(np.float64))),
        dgc_total=float(np.sum(dgc_h["bytes"].astype(np.float64))),
    )


def _histogram(counts: np.ndarray) -> dict[str, list]:
    """``{"value": [...], "count": [...]}``: the distinct integers in ``counts`` and their multiplicities."""
    v, c = np.unique(np.ravel(counts), return_counts=True)
    return {"value": v.astype(int).tolist(), "count": c.astype(int).tolist()}


def _relative(hists: list, ks: list, min_k: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ``(count / k, multiplicity)`` over the leaves with ``k >= min_k``."""
    pairs = [(np.asarray(h["value"], np.float64) / k, np.asarray(h["count"], np.float64))
             for h, k in zip(hists, ks) if k >= min_k]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _fraction_in(rel: np.ndarray, mult: np.ndarray, lo: float, hi: float) -> float:
    return float(mult[(rel >= lo) & (rel <= hi)].sum() / mult.sum()) if mult.sum() else float("nan")


def _quantiles(rel: np.ndarray, mult: np.ndarray, qs=(0.05, 0.5, 0.95)) -> list[float] | None:
    """``np.quantile`` (linear) of the values ``rel`` repeated ``mult`` times."""
    return np.quantile(np.repeat(rel, mult.astype(int)), qs).tolist() if mult.sum() else None


def _log(ctx, cfg, dense, dgc_h, dgc_ev, dgc_steps, m) -> None:
    ctx.log_history("dense", {"loss": dense.history["loss"], "bytes": dense.history["bytes"]}, every=10)
    ctx.log_history("dgc", {"loss": dgc_h["loss"], "bytes": dgc_h["bytes"], "density": dgc_h["density"]}, every=10)
    for s_, a_ in zip(dense.eval_steps, dense.evals["test_acc"]):
        ctx.log("dense_eval", step=s_, seed=m["seed"], test_acc=a_)
    for s_, a_ in zip(dgc_steps, dgc_ev["test_acc"]):
        ctx.log("dgc_eval", step=s_, seed=m["seed"], test_acc=a_)
    rel, mult = _relative(m["sent_counts"], m["ks"])
    ctx.log("summary", seed=m["seed"], n_params=m["n_params"], n_workers=cfg["n_workers"], steps=m["steps"],
            phases=m["phases"], backend=cfg["backend"], dense_bytes_per_step=m["dense_bytes"],
            dgc_bytes_per_step_final=m["dgc_bytes_final"], compression_ratio=m["dense_bytes"] / m["dgc_bytes_final"],
            acc_dense=m["acc_dense"], acc_dgc=m["acc_dgc"], total_bytes_dense=m["dense_total"],
            total_bytes_dgc=m["dgc_total"], sent_over_k_min=float(rel.min()), sent_over_k_max=float(rel.max()),
            k_per_leaf=m["ks"], bookkeeping_max_abs=m["book"], replica_spread_max=m["replica_spread_max"])


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The bytes, count and bookkeeping claims over every seed (worst case); the accuracy gap as
    the seed mean (spread in ``measured``). Pure: reads only ``measurements``, ``config`` and CRITERIA."""
    cfg, ms, c = config, measurements["seeds"], CRITERIA
    lo, hi = c["count_low"], c["count_high"]
    m = ms[0]
    ratio = min(x["dense_bytes"] / x["dgc_bytes_final"] for x in ms)
    sent = [_relative(x["sent_counts"], x["ks"]) for x in ms]
    in_range = min(_fraction_in(r, w, lo, hi) for r, w in sent)
    rel_min, rel_max = min(float(r.min()) for r, _ in sent), max(float(r.max()) for r, _ in sent)
    est_rel, est_mult = _relative(m["estimated_counts"], m["ks"], c["estimate_min_k"])
    book = max(x["book"] for x in ms)
    gaps = np.array([100.0 * (x["acc_dense"] - x["acc_dgc"]) for x in ms])
    gap = {"mean": round(float(gaps.mean()), 3), "std": round(float(gaps.std()), 3),
           "per_seed": [round(float(g), 3) for g in gaps]}
    return [
        Claim.at_least(
            "compression-ratio",
            f"after warm-up DGC at density {cfg['final_density']:g} sends >= {c['compression_ratio_min']:g}x fewer bytes "
            "per step per worker than dense momentum SGD (values + int32 indices)",
            ratio, c["compression_ratio_min"],
            note=f"dense {m['dense_bytes']} B/step ({m['n_params']} float32 params), DGC {m['dgc_bytes_final']} B/step "
                 f"(lgrad.optim.dgc's counted traffic; message capacity floor(1.3k) per compressed leaf; leaves < "
                 f"{cfg['min_compress_size']} entries sent dense); the smallest ratio over {len(ms)} seeds",
        ),
        Claim.holds(
            "accuracy-gap",
            f"DGC's final test accuracy is at most {c['accuracy_gap_max_points']:g} points below dense momentum SGD's "
            f"(mean over {len(ms)} seeds)",
            gap, f"mean <= {c['accuracy_gap_max_points']:g}", gap["mean"] <= c["accuracy_gap_max_points"],
            note="dense / DGC per seed: " + ", ".join(f"{100 * x['acc_dense']:.2f}% / {100 * x['acc_dgc']:.2f}%"
                                                    for x in ms)
                 + f" on {m['n_test']} test images (1 image = {100 / m['n_test']:g} points) after {m['steps']} steps "
                   f"({cfg['backend']} backend)",
        ),
        Claim.at_least(
            "selected-count",
            f"fraction of (step, worker, compressed leaf) after warm-up whose sent count lies in [{lo:g}k, {hi:g}k]",
            in_range, c["selected_fraction_min"],
            note=f"sent/k in [{rel_min:.3f}, {rel_max:.3f}]; k per leaf {m['ks']}; the smallest fraction over "
                 f"{len(ms)} seeds",
        ),
        Claim.finding(
            "threshold-estimate",
            f"fraction of (step, worker, leaf with k >= {c['estimate_min_k']:g}) whose count over the refined sampled "
            f"threshold is in [{lo:g}k, {hi:g}k] (seed {m['seed']})",
            _fraction_in(est_rel, est_mult, lo, hi),
            note="the refinement lowers the threshold while too few pass and interpolates once too many have passed; a "
                 f"count above {hi:g}k remains only on ties (the message is then cut to floor({hi:g}k)); quantiles "
                 f"(5/50/95%) of estimated/k: {_quantiles(est_rel, est_mult)}",
        ),
        Claim.at_most(
            "bookkeeping-identity",
            "max |sent + residual - accumulated| over all steps, workers and entries (DGCState.bookkeeping)",
            book, c["bookkeeping_max"],
        ),
        Claim.finding(
            "bytes",
            "bytes sent per worker: per step after warm-up and in total (dense vs DGC)",
            {"dense_per_step": float(m["dense_bytes"]), "dgc_per_step": float(m["dgc_bytes_final"]),
             "dense_total": m["dense_total"], "dgc_total": m["dgc_total"]},
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
