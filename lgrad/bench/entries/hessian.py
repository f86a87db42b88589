"""Benchmarks of ``lgrad.analysis.hessian``.

* ``hessian-lanczos-top10/n=<P>``: Lanczos top-10 eigenvalues (HVPs only) vs the dense
  route (build the ``P x P`` Hessian with ``P`` HVPs, then ``eigvalsh``) on MLPs of
  growing size ``P``. ``ratio < 1`` is where Lanczos wins.
* ``hessian-hvp-vs-grad``: one forward-over-reverse HVP vs one gradient (target <= 3).
* ``hessian-large-top-eig`` / ``hessian-large-slq``: top eigenvalue (Lanczos, 20
  iterations) and an SLQ density (4 probes x 30 iterations) of a >= 1M-parameter MLP
  in full mode (a small one in quick mode); times recorded against one gradient.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lgrad.analysis import hessian as hs
from lgrad.bench import Entry, time_fn, time_pair


def _mlp(key, sizes):
    params = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params.append({"w": jax.random.normal(jax.random.fold_in(key, i), (a, b)) / math.sqrt(a), "b": jnp.zeros(b)})
    return params


def _predict(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


_LOSS = hs.cross_entropy_loss(_predict)


def _problem(width, *, d=32, c=10, n=256, depth=2, seed=0):
    key = jax.random.PRNGKey(seed)
    params = _mlp(key, [d] + [width] * depth + [c])
    x = jax.random.normal(jax.random.fold_in(key, 100), (n, d))
    y = jax.random.randint(jax.random.fold_in(key, 101), (n,), 0, c)
    return params, (x, y)


def _n(params):
    return sum(x.size for x in jax.tree.leaves(params))


def run(quick: bool) -> list[Entry]:
    entries: list[Entry] = []
    key = jax.random.PRNGKey(0)

    # --- Lanczos top-10 vs dense eigendecomposition at growing sizes
    widths = [1, 4] if quick else [1, 4, 12, 24, 48, 96, 160]
    for w in widths:
        params, batch = _problem(w, depth=1)
        n = _n(params)
        iters = min(n, 60)
        lz = jax.jit(lambda p, b: hs.lanczos(hs.hessian_operator(_LOSS, p, b), 10, key=key, num_iters=iters).eigenvalues)
        dense = jax.jit(lambda p, b: jnp.linalg.eigvalsh(hs.hessian_matrix(_LOSS, p, b))[-10:])
        reps = 3 if quick else 5
        t_l, t_d = time_pair(lz, (params, batch), dense, (params, batch), repeats=reps, warmup=1)
        entries.append(
            Entry(
                f"hessian-lanczos-top10/n={n}",
                f"Lanczos top-10 ({iters} iters, full reorth.) vs dense Hessian + eigvalsh, MLP with {n} params",
                t_l, t_d, "s", extra={"n_params": n, "lanczos_iters": iters},
            )
        )

    # --- HVP cost / gradient cost
    params, batch = _problem(64 if quick else 512, depth=2, n=256 if quick else 1024)
    v = jax.tree.map(jnp.ones_like, params)
    hv = jax.jit(lambda p, b, v: hs.hvp(_LOSS, p, b, v))
    gr = jax.jit(jax.grad(_LOSS))
    t_h, t_g = time_pair(hv, (params, batch, v), gr, (params, batch), repeats=11 if quick else 31)
    entries.append(
        Entry(
            "hessian-hvp-vs-grad",
            f"one forward-over-reverse HVP vs one gradient, MLP with {_n(params)} params",
            t_h, t_g, "s", max_ratio=3.0, extra={"n_params": _n(params)},
        )
    )

    # --- a large model: top eigenvalue and SLQ density (times vs one gradient)
    width = 64 if quick else 1400  # full: 32*1400 + 1400*1400 + 1400*10 + biases ~ 2.0M params
    params, batch = _problem(width, depth=2, n=128 if quick else 512)
    n = _n(params)
    gr = jax.jit(jax.grad(_LOSS))
    t_g = time_fn(gr, params, batch, repeats=5, warmup=1)
    top = jax.jit(lambda p, b: hs.lanczos(hs.hessian_operator(_LOSS, p, b), 1, key=key, num_iters=20).eigenvalues)
    t_top = time_fn(top, params, batch, repeats=1 if not quick else 3, warmup=1)
    slq = jax.jit(
        lambda p, b: hs.spectral_density(hs.hessian_operator(_LOSS, p, b), key=key, num_probes=4, num_iters=30).density
    )
    t_slq = time_fn(slq, params, batch, repeats=1 if not quick else 3, warmup=1)
    lam = float(top(params, batch)[0])
    entries.append(
        Entry(
            "hessian-large-top-eig",
            f"top Hessian eigenvalue (Lanczos, 20 iters) of a {n}-param MLP, vs one gradient",
            t_top, t_g, "s", extra={"n_params": n, "lambda_max": lam},
        )
    )
    entries.append(
        Entry(
            "hessian-large-slq",
            f"SLQ spectral density (4 probes x 30 iters) of a {n}-param MLP, vs one gradient",
            t_slq, t_g, "s", extra={"n_params": n},
        )
    )
    return entries
