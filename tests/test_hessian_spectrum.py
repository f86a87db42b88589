"""hessian-spectrum: the seed-batched initialisation and training equal the per-seed ones."""
from __future__ import annotations

import jax
import numpy as np

from experiments import hessian_spectrum as exp


def test_init_stack_equals_init_mlp_bit_for_bit():
    cfg = exp.CONFIGS["quick"]
    keys = [jax.random.fold_in(jax.random.PRNGKey(s), 40) for s in range(3)]
    with jax.enable_x64(True):
        for width, k in [(10, 2), (40, 10), (160, 3)]:
            got = exp._init_stack(keys, cfg["dim"], width, k, length=exp._draw_length(cfg))
            want = exp._stack([exp.init_mlp(key, cfg["dim"], width, k) for key in keys])
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(a, b)


def test_training_the_seeds_together_equals_training_them_alone():
    cfg = dict(exp.CONFIGS["quick"], n_points=60, steps=20)
    with jax.enable_x64(True):
        data, keys = exp._mixtures(cfg, 2, 3)
        params, losses, acc = exp._train(cfg, keys, data, 8, 3)
        for s in range(2):
            alone, alone_losses, alone_acc = exp._train(cfg, keys[s:s + 1], exp._stack([exp._seed(data, s)]), 8, 3)
            for a, b in zip(jax.tree.leaves(exp._seed(params, s)), jax.tree.leaves(alone)):
                np.testing.assert_allclose(a, b[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(losses[:, s], alone_losses[:, 0], rtol=1e-12)
            assert acc[s] == alone_acc[0]
