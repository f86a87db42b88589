"""MeZO: peak memory of a zeroth-order step vs a backprop step (XLA compiled memory)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.bench import Entry, compiled_memory
from lgrad.optim import mezo


def _mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros((b,))}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    out = h @ params[-1]["w"] + params[-1]["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))


def run(quick: bool) -> list[Entry]:
    sizes = (256, 512, 512, 512, 10) if quick else (784, 2048, 2048, 2048, 2048, 10)
    batch = 2048 if quick else 8192  # activation-heavy regime (as in LM fine-tuning with long inputs)
    params = _mlp(jax.random.PRNGKey(0), sizes)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    x = jnp.ones((batch, sizes[0]))
    y = jnp.zeros((batch,), jnp.int32)
    zo = mezo(1e-4, axis_name=None)  # one worker
    sgd = optax.sgd(1e-2)
    adam = optax.adam(1e-3)

    def zo_step(p, s, xb, yb):
        u, s = zo.update(None, s, p, loss_fn=lambda q: _loss(q, xb, yb))
        return optax.apply_updates(p, u), s

    def bp_step(p, s, xb, yb):
        g = jax.grad(_loss)(p, xb, yb)
        u, s = sgd.update(g, s, p)
        return optax.apply_updates(p, u), s

    def adam_step(p, s, xb, yb):
        g = jax.grad(_loss)(p, xb, yb)
        u, s = adam.update(g, s, p)
        return optax.apply_updates(p, u), s

    def infer(p, xb, yb):
        return _loss(p, xb, yb)

    m_zo = compiled_memory(zo_step, params, zo.init(params), x, y)
    m_bp = compiled_memory(bp_step, params, sgd.init(params), x, y)
    m_adam = compiled_memory(adam_step, params, adam.init(params), x, y)
    m_inf = compiled_memory(infer, params, x, y)
    if not m_zo or not m_bp:
        return []
    # donated parameters and state (what a training loop does): outputs reuse them
    d_zo = compiled_memory(zo_step, params, zo.init(params), x, y, donate=(0, 1))
    d_bp = compiled_memory(bp_step, params, sgd.init(params), x, y, donate=(0, 1))
    shape = f"MLP {'-'.join(map(str, sizes))} ({n_params / 1e6:.2f}M params), batch {batch}"
    return [
        Entry(
            "mezo-memory-donated/backprop-sgd",
            f"as mezo-memory/backprop-sgd with parameters and state donated on both sides; {shape}",
            d_zo["peak"], d_bp["peak"], "bytes", max_ratio=1.0, extra={"mezo": d_zo, "backprop": d_bp},
        ),
        Entry(
            "mezo-memory/inference",
            "XLA peak bytes of one MeZO step (params and state donated) ÷ one inference-only forward "
            f"(loss of the batch; MeZO's headline: inference-level memory); {shape}",
            d_zo["peak"], m_inf["peak"], "bytes", extra={"inference": m_inf},
        ),
        Entry(
            "mezo-memory/backprop-sgd",
            f"XLA peak bytes of one step: MeZO (2 forward passes, regenerated z) vs backprop SGD; MLP "
            f"{'-'.join(map(str, sizes))} ({n_params / 1e6:.2f}M params), batch {batch}",
            m_zo["peak"], m_bp["peak"], "bytes", max_ratio=1.0,
            extra={"inference_peak": m_inf.get("peak"), "mezo_over_inference": m_zo["peak"] / max(1, m_inf.get("peak", 1)),
                   "mezo": m_zo, "backprop": m_bp},
        ),
        Entry(
            "mezo-memory/backprop-adam",
            f"as mezo-memory/backprop-sgd, against backprop with Adam (the paper's headline baseline)",
            m_zo["peak"], m_adam["peak"], "bytes", max_ratio=1.0, extra={"adam": m_adam},
        ),
    ]
