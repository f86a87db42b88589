"""The federated layer across two processes (jax.distributed, gloo on 127.0.0.1)
gives the numbers of one process with backend="vmap"."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad import federated, robust
from lgrad.distributed import multiprocess, topology

SCRIPT = textwrap.dedent(
    """
    import sys
    from lgrad.distributed import multiprocess
    assert multiprocess.initialize_from_env(), "LGRAD_* variables missing"
    import jax, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_federated_multiprocess import run_both

    server, worker = run_both("mesh")
    if multiprocess.is_main_process():
        np.savez(sys.argv[1], processes=jax.process_count(), server=server, worker=worker)
    """
)


def _loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ p["w"] - y) ** 2)


def run_both(backend: str, rounds: int = 3):
    """FedAvg with a robust aggregator (4 of 8 clients per round) and D-SGD on a
    ring of 4 workers; returns both final parameters as host arrays."""
    rng = np.random.default_rng(0)
    data = federated.ClientData((rng.normal(size=(8, 6, 3)).astype(np.float32),
                                 rng.normal(size=(8, 6)).astype(np.float32)), np.full((8,), 6, np.int32))
    client = federated.local_training(optax.sgd(0.1), _loss, local_steps=2, batch_size=3)
    server = federated.server_algorithm(client, n_clients=8, participation=0.5, backend=backend,
                                        aggregator=federated.rule_aggregator(robust.median))
    worker = federated.worker_algorithm(
        federated.decentralized(optax.sgd(0.1), federated.gossip_mix(topology.metropolis_hastings(topology.ring(4)))),
        _loss, n_workers=4, batch_size=3, backend=backend)
    out = []
    for alg, n, d, replicate in ((server, 8, data, True), (worker, 4, jax.tree.map(lambda a: a[:4], data), False)):
        d = federated.shard_workers(d, n_workers=n, backend=backend, replicate=replicate)
        state = alg.init(None, {"w": np.zeros(3, np.float32)})
        for r in range(rounds):
            state, _ = jax.jit(alg.round)(state, d, jax.random.PRNGKey(r))
        out.append(multiprocess.to_host(state.params["w"]))
    return out


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "fed_mp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.npz"
    rc = multiprocess.launch([sys.executable, str(script), str(out), str(Path(__file__).parent)], 2,
                             devices_per_process=1, timeout_s=180, init_timeout_s=60, log_dir=tmp_path / "logs")
    logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert rc == 0, f"2-process federated run failed (exit {rc}). Logs:\n{logs}"
    got = np.load(out)
    server, worker = run_both("vmap")
    assert int(got["processes"]) == 2
    np.testing.assert_allclose(got["server"], server, atol=1e-6)
    np.testing.assert_allclose(got["worker"], worker, atol=1e-6)
