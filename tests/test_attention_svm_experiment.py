"""attention-svm (the experiment): its flat-row problem draws equal the library's bit for bit."""
from __future__ import annotations

import jax
import numpy as np

from experiments import attention_svm as exp
from lgrad.analysis import attention_svm as asvm


def test_problems_equal_make_problem_and_init_params():
    cfg = exp.CONFIGS["quick"]
    key = jax.random.PRNGKey(3)
    with jax.enable_x64(True):
        for seeds, d in [(4, 2), (4, 10), (3, 24)]:
            prob, params = exp._problems(key, seeds, cfg["n"], cfg["T"], d, length=exp._draw_length(cfg))
            kd, ki = jax.random.split(key)
            want_prob = jax.vmap(lambda k: asvm.make_problem(k, cfg["n"], cfg["T"], d))(jax.random.split(kd, seeds))
            want_params = jax.vmap(lambda k: asvm.init_params(k, d, "both"))(jax.random.split(ki, seeds))
            for a, b in zip(jax.tree.leaves((prob, params)), jax.tree.leaves((want_prob, want_params))):
                np.testing.assert_array_equal(a, b)
