"""relp-patching: the linear toy agrees exactly; RelP rules keep the transformer's outputs; the claims."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from experiments import relp_patching as exp
from lgrad.analysis import attribution as at


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


def test_claims_from_hand_made_measurements():
    """``claims`` alone, on measurements as read back from JSON (2 seeds)."""
    pearson = {"mlp": {"attribution": [0.5, 0.7], "relp": [0.49, 0.67]}, "attn": {"attribution": [0.2, 0.4], "relp": [0.9, float("nan")]}}
    config = dict(exp.CONFIGS["quick"], n_seeds=2)
    out = {c.id: c for c in exp.claims({"linear_error": 3e-16, "pearson": pearson, "accuracy": [1.0, 0.9876]}, config)}
    assert out["linear-toy-agreement"].passed
    rel = out["relp-mlp-vs-attribution"]
    assert rel.passed and rel.measured == np.mean([0.49, 0.67]) - np.mean([0.5, 0.7]) and rel.target == ">= -0.02"
    assert "test accuracy [1.0, 0.988]" in rel.note
    assert out["pearson-per-component"].measured["attn"]["attribution"] == np.mean([0.2, 0.4])
    pearson["mlp"]["relp"] = [0.4, 0.6]  # 0.1 below attribution patching: fails
    assert not {c.id: c for c in exp.claims({"linear_error": 3e-16, "pearson": pearson, "accuracy": [1.0, 1.0]}, config)}["relp-mlp-vs-attribution"].passed
