r"""HyperFL (Guo, Zeng, Chen, Zhang, Ren, Zhou & Qu, AAAI 2025): federated learning
that shares only a hypernetwork.

Client :math:`i` keeps a private embedding :math:`v_i` and a private classifier
head :math:`\phi_i`; the shared hypernetwork :math:`h_\omega` generates the
client's feature extractor :math:`\theta_i = h_\omega(v_i)`. One round:

.. math::

    \phi_i &\leftarrow \text{SGD}_{\eta_h}\big(\nabla_\phi\, \ell(\phi;\, f_{h_\omega(v_i)})\big)
      \quad (E_h \text{ epochs, } \omega, v_i \text{ fixed}),\\
    (\omega_i, v_i) &\leftarrow \text{SGD-momentum}_{\eta}\big(\mathrm{clip}_{c}\,
      \nabla_{\omega, v}\, \ell(\phi_i;\, f_{h_\omega(v)})\big) \quad (E \text{ epochs}),\\
    \omega^{t+1} &= \omega^t + \textstyle\sum_i \frac{n_i}{\sum_j n_j} (\omega_i - \omega^t).

Only :math:`\omega_i - \omega^t` leaves the client (the :class:`ClientUpdate`'s
message); :math:`v_i, \phi_i` are its persistent state. Defaults from the
authors' code: :math:`\eta_h = 0.1`, :math:`\eta = 0.02`, momentum 0.5, clip 50,
1 + 5 epochs. The project's account: ``docs/papers/hyperfl-inversion.md``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_int
from lgrad.federated._algorithm import ClientUpdate, FederatedAlgorithm, server_algorithm
from lgrad.federated._data import client_minibatch

__all__ = ["HyperFLClient", "HyperFLModel", "hyperfl", "hyperfl_client", "hyperfl_client_states"]


class HyperFLModel(NamedTuple):
    """The three functions of a HyperFL model.

    ``hypernet(omega, v) -> theta`` (feature-extractor parameters from an embedding),
    ``features(theta, x) -> z``, ``head(phi, z) -> logits``.
    """

    hypernet: Callable[[Any, jax.Array], Any]
    features: Callable[[Any, jax.Array], jax.Array]
    head: Callable[[Any, jax.Array], jax.Array]

    def logits(self, omega: Any, state: "HyperFLClient", x: jax.Array) -> jax.Array:
        return self.head(state.head, self.features(self.hypernet(omega, state.embedding), x))


class HyperFLClient(NamedTuple):
    """A client's private state: its embedding :math:`v_i` and head :math:`\\phi_i`."""

    embedding: jax.Array
    head: Any


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _sgd_epochs(tx, loss, params, arrays, count, key, steps, batch_size):
    def step(carry, k):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p, client_minibatch(arrays, count, k, batch_size))
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), value

    (p, _), values = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
    return p, values


def hyperfl_client(
    model: HyperFLModel,
    *,
    steps_per_epoch: int,
    batch_size: int,
    head_epochs: int = 1,
    epochs: int = 5,
    head_learning_rate: float = 0.1,
    learning_rate: float = 0.02,
    momentum: float = 0.5,
    clip: float = 50.0,
) -> ClientUpdate:
    """The HyperFL client (see the module docstring); ``steps_per_epoch`` minibatches of
    ``batch_size`` rows make one epoch. The message is :math:`\\omega_i - \\omega^t`;
    metrics: ``loss`` (mean over the body epochs). Its ``init`` returns a placeholder:
    draw the private states with :func:`hyperfl_client_states`."""
    spe, bs = check_int(steps_per_epoch, "steps_per_epoch", minimum=1), check_int(batch_size, "batch_size", minimum=1)
    he, e = check_int(head_epochs, "head_epochs", minimum=0), check_int(epochs, "epochs", minimum=1)
    for name, v in (("head_learning_rate", head_learning_rate), ("learning_rate", learning_rate), ("clip", clip)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    head_tx = optax.sgd(head_learning_rate)
    body_tx = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(learning_rate, momentum=momentum or None))

    def apply(omega, state: HyperFLClient, arrays, count, key):
        k_head, k_body = jax.random.split(key)
        theta = model.hypernet(omega, state.embedding)
        head_loss = lambda phi, b: _ce(model.head(phi, model.features(theta, b[0])), b[1])  # noqa: E731
        phi = state.head
        if he:
            phi, _ = _sgd_epochs(head_tx, head_loss, phi, arrays, count, k_head, he * spe, bs)
        body_loss = lambda p, b: _ce(model.logits(p[0], HyperFLClient(p[1], phi), b[0]), b[1])  # noqa: E731
        (new_omega, v), values = _sgd_epochs(body_tx, body_loss, (omega, state.embedding), arrays, count,
                                             k_body, e * spe, bs)
        delta = jax.tree.map(lambda a, b: (a - b).astype(b.dtype), new_omega, omega)
        return delta, HyperFLClient(v, phi), {"loss": jnp.mean(values)}

    return ClientUpdate(lambda omega: HyperFLClient(jnp.zeros(()), ()), apply)


def hyperfl_client_states(key: jax.Array, n_clients: int, *, embedding_dim: int,
                          head_init: Callable[[jax.Array], Any], embedding_scale: float = 1.0) -> HyperFLClient:
    """Independent private states for ``n_clients`` (leaves ``(n, ...)``): embeddings
    :math:`\\mathcal N(0, s^2)` of dimension ``embedding_dim`` and heads from ``head_init(key)``.
    Put them in the server state: ``state._replace(clients=...)``."""
    n, d = check_int(n_clients, "n_clients", minimum=1), check_int(embedding_dim, "embedding_dim", minimum=1)
    k_emb, k_head = jax.random.split(key)
    return HyperFLClient(embedding_scale * jax.random.normal(k_emb, (n, d)),
                         jax.vmap(head_init)(jax.random.split(k_head, n)))


def hyperfl(model: HyperFLModel, *, n_clients: int, participation: float = 1.0, **client_options) -> FederatedAlgorithm:
    """:func:`server_algorithm` with :func:`hyperfl_client`, the data-size-weighted mean
    and ``optax.sgd(1.0)`` on the server (plain averaging of the hypernetworks).

    ``init(key, omega)`` returns a state whose ``clients`` must be replaced by
    :func:`hyperfl_client_states` before the first round."""
    return server_algorithm(hyperfl_client(model, **client_options), n_clients=n_clients,
                            participation=participation, weighted=True)
