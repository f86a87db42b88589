"""Core of the worker-axis runtime: one per-worker function, three backends."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgrad.distributed import comm, run_workers


def _step(x, scale):
    with comm.counting() as sent:
        mean = comm.pmean(x)
        gathered = comm.all_gather(x)
        n = comm.axis_size()
        ring = comm.ppermute(x, [(i, (i + 1) % n) for i in range(n)])
        idx = comm.axis_index()
    return {"mean": mean * scale, "sum": gathered.sum(0), "ring": ring, "idx": idx, "bytes": jnp.asarray(sent.bytes)}


@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("backend", ["mesh", "pmap"])
def test_backends_agree_with_vmap(backend, n):
    assert jax.device_count() == 8
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 5))
    want = run_workers(_step, x, jnp.float32(2.0), n_workers=n, backend="vmap", in_axes=(0, None))
    got = run_workers(_step, x, jnp.float32(2.0), n_workers=n, backend=backend, in_axes=(0, None))
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(want["idx"], np.arange(n))
    np.testing.assert_allclose(want["ring"], np.roll(np.asarray(x), 1, axis=0))
    # pmean + all_gather + ppermute of a float32[5] message: 3 * 20 bytes per worker
    assert int(want["bytes"][0]) == 60


def test_bad_arguments():
    x = jnp.zeros((6, 2))
    with pytest.raises(ValueError, match="unknown backend"):
        run_workers(_step, x, 1.0, n_workers=6, backend="mpi", in_axes=(0, None))
    with pytest.raises(ValueError, match="multiple of the device count"):
        run_workers(_step, x, 1.0, n_workers=6, backend="mesh", in_axes=(0, None))
    with pytest.raises(ValueError, match="leading worker axis"):
        run_workers(_step, x, 1.0, n_workers=4, backend="vmap", in_axes=(0, None))


def test_sparse_bytes_count_indices():
    def f(v):
        with comm.counting() as sent:
            vals, idx = comm.all_gather_sparse(v[:3], jnp.arange(3, dtype=jnp.int32))
        return jnp.asarray(sent.bytes) + 0 * vals.sum() + 0 * idx.sum()

    out = run_workers(f, jnp.ones((4, 10), jnp.float32), n_workers=4)
    assert int(out[0]) == 3 * 4 + 3 * 4
