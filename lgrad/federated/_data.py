"""Client data on the worker axis: stacked, padded shards and minibatches.

Every federated or decentralized algorithm of :mod:`lgrad.federated` reads its
data as one :class:`ClientData`: each leaf of ``arrays`` has shape
``(n_clients, m, ...)`` (client ``i``'s rows first, padded to the largest client
size ``m``) and ``count[i]`` says how many rows of client ``i`` are real. Padding
repeats the client's own rows (``np.resize``), so a padded row is never another
client's data; minibatches are drawn from the first ``count[i]`` rows only.

>>> import numpy as np
>>> from lgrad import federated
>>> x, y = np.arange(10.0)[:, None], np.arange(10) % 2
>>> data = federated.stack_clients([np.arange(6), np.arange(6, 10)], x, y)
>>> data.arrays[0].shape, data.count.tolist()
((2, 6, 1), [6, 4])
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ClientData", "stack_clients", "client_minibatch", "sample_clients", "num_sampled"]


class ClientData(NamedTuple):
    """Stacked client shards: ``arrays`` leaves ``(n, m, ...)``, ``count`` ``(n,)`` int32."""

    arrays: Any
    count: jax.Array

    @property
    def num_clients(self) -> int:
        return int(np.shape(self.count)[0])


def stack_clients(parts: Sequence[np.ndarray], *arrays: Any) -> ClientData:
    """Stack the rows ``arrays[k][parts[i]]`` of every client ``i`` (padded to the
    largest part by repeating the client's own rows).

    Args:
      parts: one index array per client (e.g. from :mod:`lgrad.distributed.partition`).
      *arrays: arrays with a leading row axis; one ``(n, m, ...)`` leaf each in
        ``ClientData.arrays`` (a tuple, in the same order).
    """
    if not parts:
        raise ValueError("parts must list at least one client")
    if not arrays:
        raise ValueError("stack_clients needs at least one array to split")
    sizes = [len(p) for p in parts]
    if min(sizes) < 1:
        raise ValueError(f"every client needs at least one row; sizes {sizes}")
    m = max(sizes)
    rows = np.stack([np.resize(np.asarray(p, np.int64), m) for p in parts])
    stacked = tuple(np.asarray(a)[rows] for a in arrays)
    return ClientData(stacked, np.asarray(sizes, np.int32))


def client_minibatch(arrays: Any, count: jax.Array, key: jax.Array, batch_size: int) -> Any:
    """``batch_size`` rows drawn uniformly with replacement from one client's first
    ``count`` rows (per-client code: ``arrays`` leaves are ``(m, ...)``)."""
    idx = jax.random.randint(key, (batch_size,), 0, count)
    return jax.tree.map(lambda a: a[idx], arrays)


def num_sampled(n_clients: int, participation: float) -> int:
    """Clients taking part in a round: ``max(1, round(participation * n))``."""
    return max(1, int(round(participation * n_clients)))


def sample_clients(key: jax.Array, n_clients: int, participation: float) -> jax.Array:
    """The (sorted) indices of the clients sampled for one round, without
    replacement; all of them, in order, when ``participation == 1``."""
    m = num_sampled(n_clients, participation)
    if m == n_clients:
        return jnp.arange(n_clients)
    return jnp.sort(jax.random.choice(key, n_clients, (m,), replace=False))
