"""vmap vs mesh over 8 CPU devices: the federated layer and every multi-worker
experiment's per-round program give the same numbers (to 1e-5).

JAX fixes its device count when it starts, so the comparison runs in one
subprocess with ``JAX_NUM_CPU_DEVICES=8`` (run by the background process that
tests/conftest.py starts when the tests are collected); each experiment contributes its
``backend_probe(config, backend)`` (the same helpers its ``run`` uses) on its
``PROBE`` config (a worker count that is a multiple of 8).
"""
from __future__ import annotations

import json

import pytest

EXPERIMENTS = ("dsgd_topology", "monna_robustness", "mudhog_detection", "dgc_compression", "one_byte_zo")
LIBRARY = ("server-fedavg-sampled", "worker-dsgd-ring16", "worker-monna-torus")
TOL = 1e-5

_SCRIPT = r"""
import importlib, json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from lgrad import federated, robust
from lgrad.distributed import topology

assert jax.device_count() == 8, jax.device_count()
out = {}

def diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))

def loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ p["w"] - y) ** 2)

def run(alg, data, n, place, rounds=3):
    if place:  # worker algorithms: each worker's shard on its device
        data = federated.shard_workers(data, n_workers=n, backend="mesh")
    state = alg.init(jax.random.PRNGKey(0), {"w": jnp.zeros(3)})
    hist = []
    step = jax.jit(alg.round)
    for r in range(rounds):
        state, m = step(state, data, jax.random.PRNGKey(r))
        hist.append(m)
    return state.params, hist

rng = np.random.default_rng(0)
def data(n):
    return federated.ClientData((jnp.asarray(rng.normal(size=(n, 10, 3)), jnp.float32),
                                 jnp.asarray(rng.normal(size=(n, 10)), jnp.float32)), jnp.full((n,), 10, jnp.int32))

def library_cases():
    d16, d32 = data(16), data(32)
    client = federated.local_training(optax.sgd(0.1), loss, local_steps=3, batch_size=4)
    cases = {
        "server-fedavg-sampled": (lambda b: federated.server_algorithm(
            client, n_clients=32, participation=0.5, backend=b,
            aggregator=federated.rule_aggregator(robust.median)), d32, 16),
        "worker-dsgd-ring16": (lambda b: federated.worker_algorithm(
            federated.decentralized(optax.sgd(0.1), federated.gossip_mix(topology.metropolis_hastings(topology.ring(16)))),
            loss, n_workers=16, batch_size=4, backend=b), d16, 16),
        "worker-monna-torus": (lambda b: federated.worker_algorithm(
            robust.monna(0.1, f=1, beta=0.9, adjacency=topology.torus(4, 4), byzantine=(3,), attack=robust.attacks.sign_flip),
            loss, n_workers=16, batch_size=4, backend=b), d16, 16),
    }
    for name, (make, d, n) in cases.items():
        # the server gathers the sampled clients' data inside the round: no placement
        place = name.startswith("worker")
        out[name] = diff(run(make("vmap"), d, n, False), run(make("mesh"), d, n, place))

library_cases()
for mod in sys.argv[1:]:
    m = importlib.import_module("experiments." + mod)
    cfg = dict(m.CONFIGS["quick"], **m.PROBE)
    try:
        out[mod] = diff(m.backend_probe(cfg, "vmap"), m.backend_probe(cfg, "mesh"))
    except Exception as e:  # reported per experiment by the test
        out[mod] = repr(e)[:500]
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def mesh_results(background_jobs):
    """The subprocess's results; tests/conftest.py runs it in the background process (tests/background.py)."""
    from background import wait_for

    rc = wait_for(background_jobs["dir"] / "mesh.done", background_jobs["proc"])
    out = (background_jobs["dir"] / "mesh.log").read_text(errors="replace")
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert rc == "0" and lines, out[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
@pytest.mark.parametrize("name", LIBRARY + EXPERIMENTS)
def test_mesh_equals_vmap(mesh_results, name):
    got = mesh_results[name]
    assert not isinstance(got, str), f"{name}: backend_probe failed: {got}"
    assert got <= TOL, f"{name}: max |vmap - mesh| = {got:.3g} > {TOL}"
