"""lgrad.optim update rules against optax.scale_by_adam, and a full training step.

* ``<rule>-update/adam``: one jitted update of the rule ÷ ``optax.scale_by_adam``'s
  on a pytree of mixed shapes (10M parameters; 1M in quick mode).
* ``<rule>-update/bandwidth``: the rule's achieved bytes/s (arrays it must read and
  write × 4 bytes × parameters ÷ time) ÷ that of a plain ``x * 2 + y`` pass over the
  same arrays, the machine's practical element-wise limit.
* ``<rule>-train-step/adam``: a full jitted training step of an MLP (forward,
  backward, update, apply) with the rule ÷ the same step with ``optax.adam``.
* ``diffgrad-breakdown/*`` (where the time goes): XLA's own cost analysis of both
  compiled updates (bytes accessed, transcendentals: a deterministic count, unlike
  the timings of the shared machine), the same program with the friction's ``exp``
  removed (the memory-traffic floor of that fusion structure: the measured limit),
  and both updates with the state donated.

What the breakdown shows. XLA:CPU does not fuse sibling outputs (no multi-output loop
fusion), so Adam's update is three kernels (m: 2 reads + 1 write, v: 2 + 1, u: 3 + 1 =
9 array passes, XLA's 36 bytes per parameter) and diffGrad's four (m, v, u reading g,
m, v, g_prev, and a copy of the incoming g into the state's g_prev: 13 passes, 52 bytes
per parameter), a deterministic 1.44 (``xla-bytes``). The g_prev copy exists because a
jitted function's output may not be its (undonated) input buffer: the jaxpr forwards g
unchanged, XLA copies it. Inside a training step the gradient is an intermediate, the
copy disappears, and diffGrad's step costs 1.04-1.12x Adam's (``train-step``).

The timed update ratio moves more between runs than the target's margin: on the idle
2-core CPU on 2026-12-02, 1.36, 1.27 and 1.43 in three runs (the committed one is the
last; p10-p90 within a run about 0.84-1.82), 1.56 in a loaded run the day before. So the 1.35
target is met in some runs and missed in others; the deterministic byte ratio (1.44,
13 vs 9 passes) says the structure is above it and that the timings are not
bandwidth-bound enough to show it reliably. The no-``exp`` variant (``no-exp-floor``,
same kernels) was 1.51, 1.28 and 1.30 in those runs, no lower than diffGrad itself: the
logistic is not what costs. A one-pass kernel moving 8 vs 6 arrays would need the
g_prev copy gone (a state layout in which g_prev is not a separate output): not done.
Donating the state makes both sides slower here (``donated``): JAX pairs donated
inputs with outputs in order (g with u, g_prev with g_prev), so XLA copies g before u
overwrites it and the old g_prev before g is written into it (cost analysis: 17 vs 9
passes with g and the state donated, 21 vs 13 with the state alone).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.bench.entry import Entry
from lgrad.bench.timing import time_fn, time_pair, time_pair_spread
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


def _xla_costs(fn: Callable, *args: Any, donate: tuple = ()) -> dict[str, float]:
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(cost.get(k, 0.0)) for k in ("bytes accessed", "transcendentals", "flops")}


def _friction_free(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """diffGrad's update with the sigmoid replaced by |g_prev - g| (no transcendental
    besides the sqrt Adam has too): same arrays, same fusion structure."""
    base = scale_by_diffgrad(b1, b2, eps)

    def update(g, s, params=None):
        count = s.count + 1
        t = count.astype(jnp.float32)
        c = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        mu = jax.tree.map(lambda a, m: b1 * m + (1 - b1) * a, g, s.mu)
        nu = jax.tree.map(lambda a, v: b2 * v + (1 - b2) * a * a, g, s.nu)
        u = jax.tree.map(lambda a, m, v, p: c * jnp.abs(p - a) * m / (jnp.sqrt(v) + eps), g, mu, nu, s.prev_grad)
        return u, s._replace(count=count, mu=mu, nu=nu, prev_grad=g)

    return optax.GradientTransformation(base.init, update)


def _donated_pair(tx: optax.GradientTransformation, grads: Any) -> Callable[[], Any]:
    """A thunk running one update with the state donated (the state is threaded)."""
    fn = jax.jit(tx.update, donate_argnums=(1,))
    box = [tx.init(grads)]

    def call():
        u, box[0] = fn(grads, box[0])
        return u

    return call


def _diffgrad_breakdown(grads: Any, n: int, repeats: int) -> list[Entry]:
    adam, dg = optax.scale_by_adam(), scale_by_diffgrad()
    c_adam = _xla_costs(adam.update, grads, adam.init(grads))
    c_dg = _xla_costs(dg.update, grads, dg.init(grads))
    out = [
        Entry("diffgrad-breakdown/xla-bytes/adam",
              "XLA cost analysis: bytes accessed by the compiled diffgrad update ÷ scale_by_adam's "
              "(deterministic; see the module docstring for the kernels)",
              c_dg["bytes accessed"], c_adam["bytes accessed"], "bytes",
              extra={"diffgrad": c_dg, "adam": c_adam, "per_param": {"diffgrad": c_dg["bytes accessed"] / n,
                                                                       "adam": c_adam["bytes accessed"] / n}}),
        Entry("diffgrad-breakdown/xla-transcendentals/adam",
              "XLA cost analysis: transcendental evaluations (diffgrad: sqrt + logistic; adam: sqrt)",
              c_dg["transcendentals"], c_adam["transcendentals"], "ops"),
    ]
    fn_f, args_f = _update_program(_friction_free(), grads)
    fn_a, args_a = _update_program(adam, grads)
    t_f, t_a, spread = time_pair_spread(fn_f, args_f, fn_a, args_a, repeats=repeats)
    out.append(Entry("diffgrad-breakdown/no-exp-floor/adam",
                     "measured limit: diffgrad's update without the sigmoid (same arrays and kernels) ÷ "
                     f"scale_by_adam, {n / 1e6:g}M params; shared 2-core CPU, interleaved medians",
                     t_f, t_a, "s", extra=spread))
    t_d, t_da, spread = time_pair_spread(_donated_pair(dg, grads), (), _donated_pair(adam, grads), (), repeats=repeats)
    out.append(Entry("diffgrad-breakdown/donated/adam",
                     "both updates with the state donated (XLA then copies m and v: the u kernel reads "
                     f"the old moments), {n / 1e6:g}M params; shared 2-core CPU",
                     t_d, t_da, "s", extra=spread))
    return out


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
        t_ours, t_adam, spread = time_pair_spread(fn, args, adam_fn, adam_args, repeats=repeats)
        entries.append(
            Entry(
                f"{name}-update/adam",
                f"one jitted {name} update ÷ optax.scale_by_adam's, {n / 1e6:g}M float32 params in mixed shapes; "
                "2-core CPU, interleaved medians (moves by about the target's margin between runs: see diffgrad-breakdown)",
                t_ours,
                t_adam,
                "s",
                max_ratio=target,
                extra={"n_params": n, "arrays_moved": arrays, "adam_arrays_moved": ADAM_ARRAYS, **spread},
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
    entries += _diffgrad_breakdown(grads, n, repeats)
    return entries
