"""relp-patching: the linear toy agrees exactly; RelP rules keep the transformer's outputs; SMOKE run."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from experiments import relp_patching as exp
from lgrad.analysis import attribution as at
from lgrad.engine import run_experiment


def test_linear_toy():
    assert exp.linear_toy_error() < 1e-10


def test_relp_rules_do_not_change_the_transformer_outputs():
    cfg = dict(exp.CONFIGS["quick"], d_model=8, n_heads=2)
    graphdef, state = nnx.split(exp.Transformer(cfg, nnx.Rngs(0)))
    x, _ = exp.task(jax.random.PRNGKey(0), 4, cfg)
    plain = nnx.merge(graphdef, state)(x)
    with at.rules("relp"):
        relp = nnx.merge(graphdef, state)(x)
    np.testing.assert_allclose(relp, plain, atol=1e-5)


def test_smoke(tmp_path):
    result = run_experiment(exp.NAME, "quick", exp.SMOKE, tmp_path, show_progress=False)
    ids = {c.id: c for c in result.claims}
    assert ids["linear-toy-agreement"].passed
    assert "relp-mlp-vs-attribution" in ids
