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

__all__ = ["ClientData", "stack_clients", "stack_runs", "client_minibatch", "sample_clients", "num_sampled"]


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


def stack_runs(runs: Sequence[ClientData]) -> ClientData:
    """Several independent runs' client data on a leading run axis, for ``jax.vmap`` over
    runs (seeds): leaves ``(R, n, m, ...)``, ``count`` ``(R, n)``. Shards are zero-padded
    to the longest run's ``m``; minibatches draw from a client's first ``count`` rows, so
    the padding is never read and each run trains as on its own data."""
    if not runs:
        raise ValueError("runs must list at least one ClientData")
    shapes = {(r.num_clients, len(r.arrays)) for r in runs}
    if len(shapes) != 1:
        raise ValueError(f"every run needs the same number of clients and arrays, got (clients, arrays) {sorted(shapes)}")
    m = max(np.shape(r.arrays[0])[1] for r in runs)

    def pad(a):
        a = np.asarray(a)
        return np.pad(a, [(0, 0), (0, m - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    arrays = tuple(np.stack([pad(r.arrays[i]) for r in runs]) for i in range(len(runs[0].arrays)))
    return ClientData(arrays, np.stack([np.asarray(r.count) for r in runs]))


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
