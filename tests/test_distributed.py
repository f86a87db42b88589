"""Worker runtime: vmap == mesh inside a jitted scan, exact byte counts, bad input."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgrad.distributed import comm, make_program, place, run_workers, topology, worker_mesh
from lgrad.train import run_loop


def _dsgd_loop(backend: str, n: int, steps: int = 6):
    """A D-SGD-like loop (local step, ring gossip, pmean diagnostic) in run_loop's scan."""
    w = topology.metropolis_hastings(topology.ring(n))
    targets = jnp.asarray(np.random.default_rng(0).normal(size=(n, 3)), jnp.float32)

    def worker(x, target, key):
        x = x - 0.3 * (x - target) + 0.01 * jax.random.normal(key, x.shape)
        with comm.counting() as sent:
            x = topology.gossip(x, w)
        return x, comm.pmean(jnp.sum(x**2)), jnp.asarray(sent.bytes)

    program = make_program(worker, n_workers=n, backend=backend, in_axes=(0, 0, 0))

    def step(carry):
        x, key = carry
        key, sub = jax.random.split(key)
        x, sq, sent = program(x, targets, jax.random.split(sub, n))
        return (x, key), {"sq": sq.mean(), "bytes_sent": sent[0]}

    carry = (jnp.zeros((n, 3)), jax.random.PRNGKey(1))
    if backend != "vmap":
        mesh = worker_mesh(n)
        carry = (place(carry[0], NamedSharding(mesh, P("workers"))), carry[1])
    res = run_loop(step, carry, steps=steps)
    return np.asarray(res.state[0]), res.history


@pytest.mark.parametrize("n", [8, 16])
def test_vmap_equals_mesh_in_jitted_scan(n):
    assert jax.device_count() == 8
    xv, hv = _dsgd_loop("vmap", n)
    xm, hm = _dsgd_loop("mesh", n)
    np.testing.assert_allclose(xm, xv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hm["sq"], hv["sq"], rtol=1e-6)
    # Step metrics carry the exact bytes: 2 neighbours x float32[3] per step.
    np.testing.assert_array_equal(hv["bytes_sent"], np.full(6, 24))
    np.testing.assert_array_equal(hm["bytes_sent"], np.full(6, 24))


@pytest.mark.parametrize("backend", ["vmap", "mesh"])
def test_partial_permutation_on_every_backend(backend):
    # jax's vmap rule rejects partial permutations; comm.ppermute completes them.
    x = jnp.arange(8.0)[:, None] + 1

    def f(v):
        with comm.counting() as sent:
            y = comm.ppermute(v, [(0, 3), (5, 1)])
        return y, jnp.asarray(sent.bytes)

    y, sent = run_workers(f, x, n_workers=8, backend=backend)
    want = np.zeros(8)
    want[3], want[1] = 1.0, 6.0
    np.testing.assert_array_equal(np.asarray(y)[:, 0], want)
    assert int(sent[0]) == 4


def test_exact_bytes_for_known_messages():
    def f(v):
        with comm.counting() as outer:
            comm.psum(v)  # float32[10]: 40
            comm.pmean({"a": v.astype(jnp.bfloat16), "b": v[:2].astype(jnp.float64)})  # 20 + 16
            with comm.counting() as inner:
                comm.all_gather_sparse(v[:4], jnp.arange(4, dtype=jnp.int32))  # 16 + 16
                comm.all_gather(v[:1].astype(jnp.int8))  # 1
            comm.ppermute(v, [])  # nothing sent
        return jnp.asarray([outer.bytes, inner.bytes, outer.calls, outer.by_kind["all_gather_sparse"]])

    with jax.enable_x64(True):
        out = np.asarray(run_workers(f, jnp.ones((4, 10), jnp.float32), n_workers=4))
    np.testing.assert_array_equal(out[0], [40 + 36 + 32 + 1, 33, 4, 32])
    assert comm.nbytes({"w": jnp.zeros((3, 5)), "i": np.zeros(7, np.int64)}) == 60 + 56


def test_counting_is_trace_time_and_nests():
    with comm.counting() as outer:
        with comm.counting() as inner:
            comm.record("custom", 7)
        comm.record("custom", 5)
    assert (inner.bytes, outer.bytes, outer.calls) == (7, 12, 2)


def test_bad_input():
    x = jnp.zeros((12, 2))
    with pytest.raises(ValueError, match=r"n_workers \(12\) must be a multiple of the device count \(8\)"):
        run_workers(lambda v: v, x, n_workers=12, backend="mesh")
    with pytest.raises(ValueError, match="must be a multiple of the device count"):
        make_program(lambda v: v, n_workers=4, backend="pmap", in_axes=(0,))
    with pytest.raises(ValueError, match="unknown backend 'ray'"):
        run_workers(lambda v: v, x, n_workers=12, backend="ray")
    with pytest.raises(ValueError, match="n_workers must be a positive integer"):
        run_workers(lambda v: v, x, n_workers=0)
    with pytest.raises(ValueError, match="in_axes has 2 entries for 1 arguments"):
        run_workers(lambda v: v, x, n_workers=12, in_axes=(0, None))


def test_place_fully_addressable():
    mesh = worker_mesh(8)
    a = place(np.arange(16.0).reshape(8, 2), NamedSharding(mesh, P("workers")))
    assert a.sharding.spec == P("workers") and len(a.addressable_shards) == 8
