"""DGC: step time vs dense momentum SGD, and the sampled threshold vs exact top-k."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.bench import Entry, time_pair
from lgrad.distributed import comm, make_program
from lgrad.optim import dgc
from lgrad.optim import select_topk


def _mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def _loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def run(quick: bool) -> list[Entry]:
    sizes = (784, 256, 10) if quick else (784, 1024, 1024, 10)
    batch = 64
    params = _mlp(jax.random.PRNGKey(0), sizes)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.PRNGKey(1), (1, batch, sizes[0]))
    y = jax.random.randint(jax.random.PRNGKey(2), (1, batch), 0, sizes[-1])
    dev = [jax.devices()[0]]  # one worker on one device: the exchange is traced but trivial
    add = lambda t: jax.tree.map(lambda a: a[None], t)  # noqa: E731

    def stepper(tx, reduce_dense):
        def worker(p, s, xb, yb):
            g = jax.grad(_loss)(p, xb, yb)
            if reduce_dense:
                g = comm.pmean(g)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return jax.jit(make_program(worker, n_workers=1, backend="mesh", in_axes=(0, 0, 0, 0), devices=dev))

    sgd = optax.sgd(0.05, momentum=0.9)
    tx = dgc(0.05, density=0.001, min_compress_size=1000)  # biases sent dense
    dense_step = stepper(sgd, True)
    dgc_step = stepper(tx, False)
    args_dense = (add(params), add(sgd.init(params)), x, y)
    args_dgc = (add(params), add(tx.init(params)), x, y)
    reps = 7 if quick else 21
    t_dgc, t_dense = time_pair(dgc_step, args_dgc, dense_step, args_dense, repeats=reps)
    tx_exact = dgc(0.05, density=0.001, min_compress_size=1000, threshold="exact")
    t_dgc_exact, t_dense2 = time_pair(stepper(tx_exact, False), (add(params), add(tx_exact.init(params)), x, y),
                                      dense_step, args_dense, repeats=reps)
    model = f"MLP {'-'.join(map(str, sizes))} ({n_params / 1e6:.2f}M params{', quick: smaller than the 1M target model' if quick else ''})"
    entries = [
        Entry(
            "dgc-step/momentum-sgd",
            f"one training step (grad + update), DGC density 0.001 sampled threshold vs dense momentum SGD; {model}, batch {batch}, 1 worker, {jax.default_backend()}",
            t_dgc, t_dense, "s", max_ratio=1.3, extra={"n_params": n_params},
        ),
        Entry(
            "dgc-step-exact/momentum-sgd",
            f"as dgc-step but with the exact lax.top_k selection; {model}, batch {batch}, 1 worker, {jax.default_backend()}",
            t_dgc_exact, t_dense2, "s", max_ratio=1.3, extra={"n_params": n_params},
        ),
    ]
    n = 100_000 if quick else 1_000_000
    k = n // 1000
    v = jax.random.normal(jax.random.PRNGKey(3), (n,))
    sampled = jax.jit(lambda a: select_topk(a, k, threshold="sampled"))
    exact = jax.jit(lambda a: select_topk(a, k, threshold="exact"))
    t_s, t_e = time_pair(sampled, (v,), exact, (v,), repeats=reps)
    entries.append(
        Entry(
            "dgc-threshold/exact-topk",
            f"selecting k = {k} of {n} entries: sampled threshold (1% sample, refine) vs exact lax.top_k, {jax.default_backend()}",
            t_s, t_e, "s", max_ratio=1.0,
        )
    )
    return entries
