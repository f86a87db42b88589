r"""Federated and multi-worker algorithms as ``FederatedAlgorithm(init, round)``.

Two families, one shape (in the spirit of fedjax's ``FederatedAlgorithm``, but on
lgrad's worker axis, so the same code runs under ``vmap``, on a device mesh and
across processes):

* :func:`worker_algorithm` -- every worker holds its own parameters and optimizer
  state and takes one step per round with an optax transformation whose
  collectives do the communication: data-parallel SGD, DGC
  (:func:`lgrad.optim.dgc`), shared-randomness zeroth-order training
  (:func:`lgrad.optim.mezo`), and every decentralized rule
  (:func:`lgrad.federated.decentralized`: D-SGD, robust D-SGD, MoNNA).
* :func:`server_algorithm` -- a server and ``n_clients`` clients (FedAvg and its
  relatives, McMahan et al. 2017; Reddi et al. 2021). One round:

  .. math::

      S &\sim \text{sample}(\{1..n\}, \lceil p\,n \rfloor) \quad(\text{keyed}),\\
      \Delta_i, c_i &= \text{client}(\theta^t, c_i, D_i) \quad (i \in S,\ K \text{ local steps}),\\
      \bar\Delta &= \text{aggregate}(\{\Delta_i\}_{i\in S}; w_i = |D_i|),\\
      \theta^{t+1} &= \theta^t + \text{server\_opt}(-\bar\Delta).

  The client update is any optax transformation run for K steps in ``lax.scan``
  (:func:`local_training`) or a :class:`ClientUpdate` of your own (with
  per-client persistent state such as control variates); the aggregator is the
  weighted mean, any rule of :mod:`lgrad.robust`, or a stateful defence with the
  same ``init``/``update`` interface (:func:`lgrad.robust.mudhog.aggregator`); the
  server optimizer is any optax transformation of the pseudo-gradient
  :math:`-\bar\Delta`: ``optax.sgd(1.0)`` is FedAvg, ``optax.sgd(lr, momentum)``
  FedAvgM, ``optax.adam(lr)`` FedAdam.

Both return ``metrics`` with the traffic of the round (per worker or per client,
from :mod:`lgrad.distributed.comm`'s static counts); the exact integers are also
kept in ``algorithm.traffic`` once ``round`` has been traced.

Inputs and state. Client data is a :class:`lgrad.federated.ClientData`. With
``backend="mesh"`` place the data once with :func:`shard_workers` (split over the
workers for :func:`worker_algorithm`; ``replicate=True`` for
:func:`server_algorithm`, whose round gathers the sampled clients); ``init``
places the state itself. Under ``lgrad launch`` every process runs the same
program and reads the same replicated metrics, except :func:`worker_algorithm`'s
per-worker ``loss``, which stays split like the workers (gather it with
``lgrad.distributed.multiprocess.to_host``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgrad._validation import check_in_interval, check_int
from lgrad.distributed import comm
from lgrad.distributed.workers import BACKENDS, make_program, place, worker_mesh
from lgrad.federated._data import ClientData, client_minibatch, num_sampled, sample_clients
from lgrad.distributed.stacking import ravel_stacked

__all__ = [
    "Aggregator",
    "ClientUpdate",
    "FederatedAlgorithm",
    "ServerState",
    "WorkerState",
    "local_training",
    "mean_aggregator",
    "rule_aggregator",
    "server_algorithm",
    "shard_workers",
    "worker_algorithm",
]

LossFn = Callable[[Any, Any], jax.Array]  # loss_fn(params, batch) -> scalar


class FederatedAlgorithm(NamedTuple):
    """``init(key, params) -> state``; ``round(state, data, key) -> (state, metrics)``.

    Both are pure (``round`` is jit-able and scannable). ``traffic`` holds the exact
    byte counts of one round (Python ints) once ``round`` has been traced.
    """

    init: Callable[[jax.Array, Any], Any]
    round: Callable[[Any, ClientData, jax.Array], tuple[Any, dict[str, jax.Array]]]
    traffic: dict[str, int]


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _mesh(n: int, backend: str, axis_name: str, devices) -> jax.sharding.Mesh | None:
    return None if backend == "vmap" else worker_mesh(n, axis_name, devices)


def shard_workers(tree: Any, *, n_workers: int, backend: str = "vmap", axis_name: str = comm.AXIS,
                  devices: Sequence[Any] | None = None, replicate: bool = False) -> Any:
    """Place a pytree for ``backend``: with ``"mesh"``/``"pmap"`` its leaves (leading
    worker axis) are split over the mesh, or copied to every device with
    ``replicate=True`` (a server algorithm's client data, which the round indexes);
    under ``jax.distributed`` each process builds only its own shards. Unchanged
    for ``"vmap"``."""
    mesh = _mesh(n_workers, _check_backend(backend), axis_name, devices)
    if mesh is None:
        return tree
    return place(tree, NamedSharding(mesh, P() if replicate else P(axis_name)))


def _replicated(tree: Any, mesh) -> Any:
    """Readable on every process (under ``jax.distributed``) when on a mesh."""
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))


def _stack(tree: Any, n: int) -> Any:
    return jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (n,) + jnp.shape(a)), tree)


def _default_batches(batch_size: int | None, batch_fn):
    if batch_fn is not None:
        return batch_fn
    if batch_size is None:
        return lambda arrays, count, key: arrays  # the whole shard
    check_int(batch_size, "batch_size", minimum=1)
    return lambda arrays, count, key: client_minibatch(arrays, count, key, batch_size)


# ----------------------------------------------------------------------------- worker algorithms
class WorkerState(NamedTuple):
    """State of :func:`worker_algorithm`: leaves of ``params``/``opt_state`` are ``(n, ...)``."""

    params: Any
    opt_state: Any
    round: jax.Array


def _worker_step(tx, loss_fn, batches, gradient, axis_name, traffic):
    def worker(p, s, arrays, count, key):
        batch = batches(arrays, count, key)
        objective = lambda q: loss_fn(q, batch)  # noqa: E731
        if gradient:
            loss, g = jax.value_and_grad(objective)(p)
        else:
            loss, g = objective(p), None
        with comm.counting() as sent:
            u, s = tx.update(g, s, p, loss_fn=objective)
        traffic["bytes_sent"], traffic["calls"] = sent.bytes, sent.calls
        return optax.apply_updates(p, u), s, loss

    return worker


def worker_algorithm(
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    n_workers: int,
    batch_size: int | None = None,
    batch_fn: Callable[[Any, jax.Array, jax.Array], Any] | None = None,
    gradient: bool = True,
    backend: str = "vmap",
    axis_name: str = comm.AXIS,
    devices: Sequence[Any] | None = None,
) -> FederatedAlgorithm:
    """n workers, each taking one ``tx`` step per round on a minibatch of its data.

    Per worker :math:`i` and round: :math:`b_i \\sim D_i`; :math:`g_i = \\nabla
    \\ell(\\theta_i; b_i)` (skipped with ``gradient=False``, for zeroth-order rules that
    call ``loss_fn`` themselves); ``u_i, s_i = tx.update(g_i, s_i, θ_i,
    loss_fn=ℓ(·; b_i))`` (the collectives inside ``tx`` are the communication, and
    are counted); :math:`\\theta_i \\leftarrow \\theta_i + u_i`.

    Args:
      tx: the per-worker rule (e.g. ``optax.sgd``, ``lgrad.optim.dgc``,
        ``lgrad.optim.mezo``, ``lgrad.federated.decentralized(...)``, ``lgrad.robust.monna``).
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      n_workers: n (a multiple of the device count for ``backend="mesh"``).
      batch_size: rows per minibatch drawn from the worker's first ``count`` rows
        (``None``: the whole shard); or ``batch_fn(arrays, count, key) -> batch``.
      gradient: compute :math:`g_i` by backprop (``False`` passes ``None``).
      backend: ``"vmap"``, ``"mesh"`` or ``"pmap"`` (an alias of mesh).

    Metrics per round: ``loss``, shape ``(n_workers,)``: each worker's pre-step
    minibatch loss :math:`\\ell(\\theta_i; b_i)`, left unreduced and, on a mesh, split
    over the devices like the workers, so that a round adds no collective of its own
    (a mean over the workers here would be one more rendezvous per round across
    processes); take the mean over workers on the host, e.g. once per chunk of
    ``lgrad.train.run_loop``'s history (``history["loss"].mean(-1)``; under
    ``lgrad launch`` gather it first with ``lgrad.distributed.multiprocess.to_host``).
    ``bytes_sent`` (per worker, float32, a constant); ``traffic`` holds the exact
    ``bytes_sent`` and the number of counted collective ``calls`` per worker and round.
    """
    n = check_int(n_workers, "n_workers", minimum=1)
    mesh = _mesh(n, _check_backend(backend), axis_name, devices)
    batches = _default_batches(batch_size, batch_fn)
    tx = optax.with_extra_args_support(tx)
    traffic: dict[str, int] = {}
    worker = _worker_step(tx, loss_fn, batches, gradient, axis_name, traffic)
    program = make_program(worker, n_workers=n, backend=backend, in_axes=(0, 0, 0, 0, 0),
                           axis_name=axis_name, devices=devices)

    def init(key, params):
        del key
        stacked = _stack(params, n)
        state = WorkerState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros([], jnp.int32))
        if mesh is None:
            return state
        split = NamedSharding(mesh, P(axis_name))
        return WorkerState(place(state.params, split), place(state.opt_state, split),
                           place(state.round, NamedSharding(mesh, P())))

    def round_fn(state, data, key):
        _check_clients(data, n)
        keys = jax.random.split(key, n)
        p, s, loss = program(state.params, state.opt_state, data.arrays, data.count, keys)
        sent = _replicated(jnp.asarray(traffic["bytes_sent"], jnp.float32), mesh)  # a constant: no collective
        return WorkerState(p, s, state.round + 1), {"loss": loss, "bytes_sent": sent}

    return FederatedAlgorithm(init, round_fn, traffic)


def _check_clients(data: Any, n: int) -> None:
    if not isinstance(data, ClientData):
        raise ValueError(f"data must be a lgrad.federated.ClientData, got {type(data).__name__}")
    if data.num_clients != n:
        raise ValueError(f"data holds {data.num_clients} clients but the algorithm has {n}")


# ----------------------------------------------------------------------------- clients
class ClientUpdate(NamedTuple):
    """A client's part of a round.

    ``init(params) -> state``: one client's persistent state (``()`` if none).
    ``apply(server_params, state, arrays, count, key) -> (message, state, metrics)``:
    per-client code; ``message`` is the pytree sent to the server (the model change
    :math:`\\Delta_i = \\theta_i^K - \\theta^t` for :func:`local_training`).
    """

    init: Callable[[Any], Any]
    apply: Callable[..., tuple[Any, Any, dict[str, jax.Array]]]


def local_training(
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    local_steps: int,
    batch_size: int | None = None,
    batch_fn: Callable[[Any, jax.Array, jax.Array], Any] | None = None,
    gradient: bool = True,
) -> ClientUpdate:
    """K = ``local_steps`` steps of ``tx`` from the server's parameters (``lax.scan``;
    ``tx``'s state starts fresh every round); the message is
    :math:`\\theta^K - \\theta^t`. ExtraArgs rules (e.g. ``lgrad.optim.mezo`` with
    ``gradient=False``) get ``loss_fn=ℓ(·; batch)``. Metrics: ``loss``, the mean
    minibatch loss over the K steps."""
    k_steps = check_int(local_steps, "local_steps", minimum=1)
    batches = _default_batches(batch_size, batch_fn)
    tx = optax.with_extra_args_support(tx)

    def apply(server_params, state, arrays, count, key):
        def step(carry, k):
            p, s = carry
            objective = lambda q: loss_fn(q, batches(arrays, count, k))  # noqa: E731
            if gradient:
                loss, g = jax.value_and_grad(objective)(p)
            else:
                loss, g = objective(p), None
            u, s = tx.update(g, s, p, loss_fn=objective)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses = jax.lax.scan(step, (server_params, tx.init(server_params)), jax.random.split(key, k_steps))
        delta = jax.tree.map(lambda a, b: (a - b).astype(b.dtype), p, server_params)
        return delta, state, {"loss": jnp.mean(losses)}

    return ClientUpdate(lambda params: (), apply)


# ----------------------------------------------------------------------------- aggregators
class Aggregator(NamedTuple):
    """Server-side aggregation of the flattened messages.

    ``init(n_clients, dim, dtype) -> state``;
    ``update(state, x, weights, clients, key) -> (aggregate, state, metrics)`` with
    ``x`` (m, d) the sampled clients' messages, ``weights`` (m,) their data sizes
    (ones when unweighted), ``clients`` (m,) their indices, ``aggregate`` (d,).
    """

    init: Callable[[int, int, Any], Any]
    update: Callable[..., tuple[jax.Array, Any, dict[str, jax.Array]]]


def mean_aggregator() -> Aggregator:
    """The weighted mean :math:`\\sum_i w_i \\Delta_i / \\sum_i w_i` (FedAvg)."""

    def update(state, x, weights, clients, key):
        w = weights.astype(x.dtype)
        return (w[:, None] * x).sum(0) / w.sum(), state, {}

    return Aggregator(lambda n, d, dtype: (), update)


def rule_aggregator(rule: Callable[[jax.Array], jax.Array]) -> Aggregator:
    """A stateless rule ``rule(x) -> (d,)`` of :mod:`lgrad.robust` (weights ignored:
    the robust rules treat every client alike), e.g.
    ``rule_aggregator(functools.partial(robust.trimmed_mean, f=2))``."""
    if not callable(rule):
        raise ValueError(f"rule must be a callable rule(x) -> (d,), got {rule!r}")
    return Aggregator(lambda n, d, dtype: (), lambda state, x, w, clients, key: (rule(x), state, {}))


# ----------------------------------------------------------------------------- server algorithms
class ServerState(NamedTuple):
    """State of :func:`server_algorithm`."""

    params: Any
    opt_state: Any  # the server optimizer's
    clients: Any  # per-client persistent states, leaves (n_clients, ...)
    aggregator: Any
    round: jax.Array


@dataclasses.dataclass(frozen=True)
class _ServerSetup:
    client: ClientUpdate
    n: int
    m: int
    aggregator: Aggregator
    server_optimizer: optax.GradientTransformation
    participation: float
    weighted: bool
    corrupt: Callable | None
    mesh: Any


def server_algorithm(
    client: ClientUpdate,
    *,
    n_clients: int,
    aggregator: Aggregator | None = None,
    server_optimizer: optax.GradientTransformation | None = None,
    participation: float = 1.0,
    weighted: bool = True,
    corrupt: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None,
    backend: str = "vmap",
    axis_name: str = comm.AXIS,
    devices: Sequence[Any] | None = None,
) -> FederatedAlgorithm:
    """A server round over sampled clients (see the module docstring).

    Args:
      client: a :class:`ClientUpdate` (e.g. :func:`local_training`).
      n_clients: n.
      aggregator: :func:`mean_aggregator` (default), :func:`rule_aggregator`, or a
        stateful :class:`Aggregator` (e.g. ``lgrad.robust.mudhog.aggregator()``).
      server_optimizer: optax rule on the pseudo-gradient :math:`-\\bar\\Delta`
        (default ``optax.sgd(1.0)``: FedAvg).
      participation: fraction of clients per round, in (0, 1]; ``round(p n)`` clients
        sampled without replacement with the round's key (reproducible).
      weighted: weight clients by their data size (``data.count``); else equally.
      corrupt: simulated model poisoning ``corrupt(x, clients, key) -> x`` applied to
        the (m, d) messages before aggregation (e.g. sign-flipping clients).
      backend: where the clients run: ``"vmap"``, ``"mesh"`` (m a multiple of the
        device count) or ``"pmap"``.

    Metrics: ``loss`` (mean client metric), ``bytes_up``/``bytes_down`` (per
    participating client: its message / the model), ``participants``, and the
    aggregator's metrics.
    """
    n = check_int(n_clients, "n_clients", minimum=1)
    check_in_interval(participation, "participation", 0.0, 1.0, low_closed=False, high_closed=True)
    if not isinstance(client, ClientUpdate):
        raise ValueError(f"client must be a lgrad.federated.ClientUpdate, got {type(client).__name__}")
    m = num_sampled(n, participation)
    setup = _ServerSetup(client, n, m, aggregator or mean_aggregator(), server_optimizer or optax.sgd(1.0),
                         float(participation), bool(weighted), corrupt, _mesh(m, _check_backend(backend), axis_name, devices))
    program = make_program(client.apply, n_workers=m, backend=backend, in_axes=(None, 0, 0, 0, 0),
                           axis_name=axis_name, devices=devices)
    traffic: dict[str, int] = {}

    def init(key, params):
        del key
        flat, _ = ravel_stacked(_stack(params, 1))
        state = ServerState(params, setup.server_optimizer.init(params), jax.vmap(client.init)(_stack(params, n)),
                            setup.aggregator.init(n, flat.shape[1], flat.dtype), jnp.zeros([], jnp.int32))
        # the server's state lives on every device of the mesh (and process)
        return state if setup.mesh is None else place(state, NamedSharding(setup.mesh, P()))

    def round_fn(state, data, key):
        _check_clients(data, n)
        return _server_round(setup, program, traffic, state, data, key)

    return FederatedAlgorithm(init, round_fn, traffic)


def _server_round(setup: _ServerSetup, program, traffic, state: ServerState, data: ClientData, key):
    k_sample, k_clients, k_corrupt, k_agg = jax.random.split(key, 4)
    idx = sample_clients(k_sample, setup.n, setup.participation)
    take = lambda t: jax.tree.map(lambda a: a[idx], t)  # noqa: E731
    arrays, count, cstates = take(data.arrays), data.count[idx], take(state.clients)
    messages, cstates, cmetrics = program(state.params, cstates, arrays, count, jax.random.split(k_clients, setup.m))
    x, unravel = ravel_stacked(messages)
    if setup.corrupt is not None:
        x = setup.corrupt(x, idx, k_corrupt)
    weights = count.astype(x.dtype) if setup.weighted else jnp.ones_like(count, x.dtype)
    agg, agg_state, agg_metrics = setup.aggregator.update(state.aggregator, x, weights, idx, k_agg)
    pseudo_grad = jax.tree.map(jnp.negative, unravel(agg))
    updates, opt_state = setup.server_optimizer.update(pseudo_grad, state.opt_state, state.params)
    clients = jax.tree.map(lambda a, s: a.at[idx].set(s), state.clients, cstates)
    traffic["bytes_up"] = comm.nbytes(jax.tree.map(lambda a: a[0], messages))
    traffic["bytes_down"] = comm.nbytes(state.params)
    metrics = {k: jnp.mean(v) for k, v in cmetrics.items()}
    metrics.update(bytes_up=jnp.asarray(traffic["bytes_up"], jnp.float32),
                   bytes_down=jnp.asarray(traffic["bytes_down"], jnp.float32),
                   participants=jnp.asarray(setup.m, jnp.int32), **agg_metrics)
    new = ServerState(optax.apply_updates(state.params, updates), opt_state, clients, agg_state, state.round + 1)
    return new, _replicated(metrics, setup.mesh)
