"""Layer-local rules: compiled memory of each rule's gradient step vs backprop's.

``local-memory/<rule>/depth=<D>``: XLA ``memory_analysis`` peak bytes of
``LocalLearner(...).grads`` for an MLP (784 -> 256 x D -> 10) at batch 1024, against
end-to-end backprop on the same model and batch (``ratio < 1``: the rule needs less).
``local-temp/tpsgd/depth=<D>`` compares temporaries only (activations and
intermediates), where the forward-only step's one-block-at-a-time schedule shows; its
target is ratio <= 1.

Since the CLI takes reductions out of XLA:CPU's YNNPACK fusions (``lgrad.cli.cpu_xla_flags``,
jaxlib 0.10) the forward-only step's temporaries at depth 2 are 4.24 MB instead of
3.16 MB (one more 1024 x 256 activation buffer live at the peak; the same fusions, a
different schedule), so ``local-temp/tpsgd/depth=2`` is 1.005 (missed by 0.5%; 0.75
without the flag) while depth 4, 8 and 16 stay at 0.50, 0.25 and 0.13 (0.38, 0.19, 0.09
without it). Measured 2026-12-02 with and without the flag on the same code; the flag
stays, because it is what makes the vmapped worker means 50-100x faster.
"""
from __future__ import annotations

import jax
from flax import nnx

from lgrad.bench import Entry, compiled_memory
from lgrad.local import RULES, LocalLearner
from lgrad.local import models as M


def _mem(rule: str, depth: int, batch: int, width: int) -> dict[str, int]:
    learner = LocalLearner(M.mlp(784, (width,) * depth, 10, rngs=nnx.Rngs(0)), rule, input_shape=(784,), num_classes=10)
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 784))
    y = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, 10)
    return compiled_memory(learner.grads, learner.init_params(), learner.init_state(), x, y)


def run(quick: bool) -> list[Entry]:
    depths = (4,) if quick else (2, 4, 8, 16)
    rules = ("tpsgd", "drtp") if quick else tuple(r for r in RULES if r != "backprop")
    batch, width = 1024, 256
    out = []
    for D in depths:
        base = _mem("backprop", D, batch, width)
        for rule in rules:
            m = _mem(rule, D, batch, width)
            out.append(Entry(f"local-memory/{rule}/depth={D}", f"compiled peak bytes of the {rule} step vs backprop (MLP 784-{width}x{D}-10, batch {batch})",
                             m["peak"], base["peak"], "bytes", extra={"temp": m["temp"], "baseline_temp": base["temp"]}))
            if rule == "tpsgd":
                out.append(Entry(f"local-temp/tpsgd/depth={D}", "temporary bytes of the forward-only tpSGD step vs backprop",
                                 m["temp"], base["temp"], "bytes", max_ratio=1.0))
    return out
