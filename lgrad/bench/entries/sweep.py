"""Sweeps: 32 configurations of a small MLP, batched with vmap vs one by one.

* ``sweep/vmap-vs-sequential``: throughput (cells/s) of one ``jit(vmap(train_cell))``
  call over all 32 configurations ÷ 32 calls of the compiled single-cell program,
  compile excluded, measured interleaved. Reported per backend (no target: on a
  CPU the gain comes only from fusing 32 small matmuls into batched ones; on an
  accelerator a single cell leaves most of the chip idle).
* ``sweep/auto-vs-sequential``: end-to-end throughput of
  :func:`lgrad.sweep.run_cells` with ``strategy="auto"`` (its calibration and any
  vmap compile included) ÷ ``strategy="sequential"`` (its compile included).
  Target: ratio >= 0.9 (the automatic choice never costs more than 10%).

The MLP: 16 -> 64 -> 64 -> 1 (tanh) regressing a fixed random teacher on 256 rows,
Adam through ``optax.inject_hyperparams`` (learning rate x b1 grid), full-batch
steps (60 in quick mode, 1,500 otherwise).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.bench.entry import Entry
from lgrad.bench.timing import time_pair

N_CELLS = 32


def make_train_cell(steps: int, n: int = 256, d: int = 16, width: int = 64):
    """A fresh ``train_cell(hparams, key) -> {"loss": final loss}`` (a new function
    object each call, so nothing is reused from an earlier compile)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    teacher = rng.normal(size=(d, 1)).astype(np.float32)
    y = np.tanh(x @ teacher) + 0.1 * rng.normal(size=(n, 1)).astype(np.float32)

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        glorot = jax.nn.initializers.glorot_normal()
        return {
            "w1": glorot(k1, (d, width)), "b1": jnp.zeros(width),
            "w2": glorot(k2, (width, width)), "b2": jnp.zeros(width),
            "w3": glorot(k3, (width, 1)), "b3": jnp.zeros(1),
        }

    def loss_fn(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        h = jnp.tanh(h @ p["w2"] + p["b2"])
        return jnp.mean((h @ p["w3"] + p["b3"] - y) ** 2)

    def train_cell(hp, key):
        tx = optax.inject_hyperparams(optax.adam)(learning_rate=hp["learning_rate"], b1=hp["b1"])
        params = init(key)

        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return {"loss": loss_fn(p)}

    return train_cell


def grid() -> tuple[list[dict[str, float]], list[int]]:
    lrs = np.geomspace(1e-4, 1e-2, 8)  # above ~3e-2 Adam on this MLP is chaotic in float32
    hps = [{"learning_rate": float(lr), "b1": float(b1)} for lr in lrs for b1 in (0.8, 0.9, 0.95, 0.99)]
    return hps, list(range(len(hps)))


def run(quick: bool) -> list[Entry]:
    from lgrad.sweep import run_cells

    steps = 60 if quick else 1500
    hps, seeds = grid()
    backend = jax.default_backend()
    devices = jax.local_devices()[:1]  # the single-device figure; sharding is exercised by the tests

    # -- steady state: one vmapped call vs 32 sequential calls ------------------
    cell = make_train_cell(steps)
    names = sorted(hps[0])
    stacked = {k: jnp.asarray([h[k] for h in hps]) for k in names}
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    batched = jax.jit(jax.vmap(cell))
    single = jax.jit(cell)
    singles = [({k: jnp.asarray(h[k]) for k in names}, jax.random.PRNGKey(s)) for h, s in zip(hps, seeds)]

    def sequential(_):
        return [single(h, k) for h, k in singles]

    t_vmap, t_seq = time_pair(batched, (stacked, keys), sequential, (None,), repeats=3 if quick else 7, warmup=1)
    check = np.asarray(batched(stacked, keys)["loss"])
    ref = np.asarray([float(single(h, k)["loss"]) for h, k in singles])
    max_rel = float(np.max(np.abs(check - ref) / np.maximum(np.abs(ref), 1e-12)))

    # -- end to end, compiles included: auto vs sequential, alternated, best of 2 each
    # (compile time dominates and is noisy on a shared machine) ---------------------
    ends = {"auto": [], "sequential": []}
    chosen = {}
    for order in (("sequential", "auto"), ("auto", "sequential")):
        for strategy in order:
            fn = make_train_cell(steps)
            t0 = time.perf_counter()
            _, info = run_cells(fn, hps, seeds, strategy=strategy, devices=devices)
            ends[strategy].append(time.perf_counter() - t0)
            chosen[strategy] = info.to_dict()
    t_auto, t_seq_e2e = min(ends["auto"]), min(ends["sequential"])

    return [
        Entry(
            name=f"sweep/vmap-vs-sequential/{backend}",
            what=f"{N_CELLS} MLP configs x {steps} Adam steps: jit(vmap) throughput / one-by-one throughput (compile excluded)",
            ours=N_CELLS / t_vmap,
            baseline=N_CELLS / t_seq,
            unit="cells/s",
            extra={"backend": backend, "steps": steps, "vmap_s": t_vmap, "sequential_s": t_seq, "max_rel_diff_vmap_vs_sequential": max_rel},
        ),
        Entry(
            name=f"sweep/auto-vs-sequential/{backend}",
            what=f"{N_CELLS} MLP configs x {steps} steps end to end (compiles included): strategy=auto throughput / sequential",
            ours=N_CELLS / t_auto,
            baseline=N_CELLS / t_seq_e2e,
            unit="cells/s",
            min_ratio=0.9,
            extra={"backend": backend, "auto_s": ends["auto"], "sequential_s": ends["sequential"], "auto_choice": chosen["auto"]},
        ),
    ]
