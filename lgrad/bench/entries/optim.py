"""lgrad.optim update rules against optax.scale_by_adam, and a full training step.

* ``<rule>-update/adam``: one jitted update of the rule ÷ ``optax.scale_by_adam``'s
  on a pytree of mixed shapes (10M parameters; 1M in quick mode).
* ``<rule>-update/bandwidth``: the rule's achieved bytes/s (arrays it must read and
  write × 4 bytes × parameters ÷ time) ÷ that of a plain ``x * 2 + y`` pass over the
  same arrays, the machine's practical element-wise limit.
* ``<rule>-train-step/adam``: a full jitted training step of an MLP (forward,
  backward, update, apply) with the rule ÷ the same step with ``optax.adam``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.bench.entry import Entry
from lgrad.bench.timing import time_fn, time_pair
from lgrad.optim import diffgrad, scale_by_diffgrad

# rule name: (factory of the scale_by_* part, factory of the full optimizer, arrays
# moved per element (reads + writes) by the update, target ratio vs Adam's update)
RULES: dict[str, tuple[Callable[[], optax.GradientTransformation], Callable[[float], optax.GradientTransformation], int, float]] = {
    # diffGrad reads g, m, v, g_prev and writes m, v, g_prev, u: 8 arrays where Adam
    # moves 6 (g, m, v in; m, v, u out), so 8/6 = 1.33 is the memory-bound floor.
    "diffgrad": (scale_by_diffgrad, lambda lr: diffgrad(lr), 8, 1.35),
}
ADAM_ARRAYS = 6

_SHAPES = [(1024, 1024), (4096, 1024), (1024,), (3, 3, 64, 128), (2048, 2048), (512,), (768, 3072)]


def mixed_tree(n_params: int, seed: int = 0) -> dict[str, jax.Array]:
    """A pytree of ``n_params`` float32 parameters in mixed shapes (matrices, conv
    kernels, biases) like a real model's."""
    key = jax.random.PRNGKey(seed)
    out: dict[str, jax.Array] = {}
    total, i = 0, 0
    while total < n_params:
        shape = _SHAPES[i % len(_SHAPES)]
        size = int(np.prod(shape))
        if total + size > n_params:
            shape, size = (n_params - total,), n_params - total
        key, sub = jax.random.split(key)
        out[f"p{i:02d}"] = jax.random.normal(sub, shape, jnp.float32)
        total += size
        i += 1
    return out


def _update_program(tx: optax.GradientTransformation, grads: Any) -> tuple[Callable, tuple]:
    state = tx.init(grads)
    return jax.jit(tx.update), (grads, state)


def _mlp_step(tx: optax.GradientTransformation, sizes: list[int], batch: int) -> tuple[Callable, tuple]:
    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b)))
    x = jax.random.normal(key, (batch, sizes[0]))
    y = jax.random.randint(key, (batch,), 0, sizes[-1])

    def loss(p):
        h = x
        for i, (w, b) in enumerate(p):
            h = h @ w + b
            if i < len(p) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return step, (params, tx.init(params))


def run(quick: bool) -> list[Entry]:
    n = 1_000_000 if quick else 10_000_000
    repeats = 5 if quick else 31
    grads = mixed_tree(n)
    adam_fn, adam_args = _update_program(optax.scale_by_adam(), grads)
    ew = jax.jit(lambda a, b: jax.tree.map(lambda u, v: u * 2 + v, a, b))
    t_ew = time_fn(ew, grads, grads, repeats=repeats)
    ew_bandwidth = 3 * 4 * n / t_ew
    entries: list[Entry] = []
    sizes = [784, 512, 512, 10] if quick else [784, 2048, 2048, 10]
    batch = 64 if quick else 256
    for name, (scale_by, full, arrays, target) in RULES.items():
        fn, args = _update_program(scale_by(), grads)
        t_ours, t_adam = time_pair(fn, args, adam_fn, adam_args, repeats=repeats)
        entries.append(
            Entry(
                f"{name}-update/adam",
                f"one jitted {name} update ÷ optax.scale_by_adam's, {n / 1e6:g}M float32 params in mixed shapes",
                t_ours,
                t_adam,
                "s",
                max_ratio=target,
                extra={"n_params": n, "arrays_moved": arrays, "adam_arrays_moved": ADAM_ARRAYS},
            )
        )
        entries.append(
            Entry(
                f"{name}-update/bandwidth",
                f"{name} update's achieved bytes/s ({arrays} arrays) ÷ an x*2+y pass (3 arrays) over the same pytree",
                arrays * 4 * n / t_ours,
                ew_bandwidth,
                "B/s",
                extra={"adam_bytes_per_s": ADAM_ARRAYS * 4 * n / t_adam},
            )
        )
        step_ours, args_ours = _mlp_step(full(1e-3), sizes, batch)
        step_adam, args_adam = _mlp_step(optax.adam(1e-3), sizes, batch)
        t_ours, t_adam = time_pair(step_ours, args_ours, step_adam, args_adam, repeats=repeats)
        entries.append(
            Entry(
                f"{name}-train-step/adam",
                f"full jitted MLP training step {sizes}, batch {batch}: {name} ÷ optax.adam",
                t_ours,
                t_adam,
                "s",
                extra={"mlp": sizes, "batch": batch},
            )
        )
    return entries
