r"""LoRA adapters as a pytree wrapper, and FFA-LoRA (A frozen, only B trained and sent).

E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022;
Y. Sun, Z. Li, Y. Li, B. Ding, "Improving LoRA in Privacy-preserving Federated
Learning" (FFA-LoRA), ICLR 2024. The project's account: ``docs/papers/ffa-lora.md``.

Any kernel leaf :math:`W_0` of a parameter pytree (a Flax NNX ``Linear`` or
``Einsum`` kernel from ``nnx.split``/``nnx.to_pure_dict``, or any array with
``ndim >= 2``) becomes a :class:`LoRA` node; viewing the kernel as a matrix of
shape ``(prod(shape[:in_dims]), prod(shape[in_dims:]))``,

.. math::

    W = W_0 + \Delta W, \qquad \Delta W = \frac{\alpha}{r}\, A B, \qquad
    A \in \mathbb{R}^{m\times r} \sim U(-1/\sqrt m, 1/\sqrt m), \quad B = 0 \in \mathbb{R}^{r\times n},

which is the papers' :math:`\Delta W = \frac{\alpha}{r} B A` written in Flax's
(in, out) kernel layout (our ``A`` is their :math:`A^\top`, our ``B`` their
:math:`B^\top`). :func:`merge_lora` gives the plain pytree the model applies.
FFA-LoRA: A drawn from a shared seed (identical on every client) and frozen, B
trained; the server's mean of B is then exact, :math:`A\,\overline{B} = \overline{A B_i}`,
while vanilla LoRA's :math:`\bar A \bar B \ne \overline{A_i B_i}`.

Training composes with optax: :func:`lora_transform` is
``optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)``
with :func:`lora_labels`; :func:`per_example_grads` gives DP-SGD
(:func:`lgrad.optim._dpsgd.dpsgd`) per-example gradients of the trained leaves
only. :func:`lora_client` is the federated client whose message holds only the
trained leaves (B for FFA-LoRA: half of LoRA's traffic).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_int, check_positive
from lgrad.federated._algorithm import ClientUpdate
from lgrad.federated._data import client_minibatch

__all__ = [
    "LoRA", "lora_init", "lora_delta", "add_lora", "merge_lora", "lora_labels", "partition", "combine",
    "lora_transform", "per_example_grads", "lora_client",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoRA:
    """One adapted kernel: frozen ``w0``, ``a`` (m, r), ``b`` (r, n), static ``scale`` = α/r."""

    w0: Any
    a: Any
    b: Any
    scale: float = dataclasses.field(metadata=dict(static=True), default=1.0)

    @property
    def rank(self) -> int:
        return int(np.shape(self.a)[-1])


def _is_lora(x: Any) -> bool:
    return isinstance(x, LoRA)


def lora_init(key: jax.Array, kernel: jax.Array, *, rank: int, alpha: float, in_dims: int = 1) -> LoRA:
    r"""Wrap ``kernel``: :math:`A \sim U(-1/\sqrt m, 1/\sqrt m)` (m, r) from ``key``, B = 0 (r, n)."""
    r = check_int(rank, "rank", minimum=1)
    check_positive(alpha, "alpha")
    shape = np.shape(kernel)
    if not 1 <= in_dims < len(shape):
        raise ValueError(f"in_dims must lie in [1, {len(shape) - 1}] for a kernel of shape {shape}, got {in_dims!r}")
    m, n = int(np.prod(shape[:in_dims])), int(np.prod(shape[in_dims:]))
    dtype = jnp.result_type(kernel)
    a = jax.random.uniform(key, (m, r), dtype, -1.0 / np.sqrt(m), 1.0 / np.sqrt(m))
    return LoRA(kernel, a, jnp.zeros((r, n), dtype), float(alpha) / r)


def lora_delta(node: LoRA) -> jax.Array:
    r""":math:`\Delta W = \frac{\alpha}{r} A B` in the kernel's shape."""
    return (node.scale * (node.a @ node.b)).reshape(np.shape(node.w0)).astype(jnp.result_type(node.w0))


def _default_select(path, leaf) -> bool:
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return name == "kernel" and np.ndim(leaf) >= 2


def add_lora(params: Any, key: jax.Array, *, rank: int, alpha: float,
             select: Callable[[Any, Any], bool] | None = None,
             in_dims: Callable[[Any, Any], int] | int = 1) -> Any:
    """Wrap every leaf with ``select(path, leaf)`` (default: leaves named ``"kernel"``
    with ndim >= 2, i.e. NNX ``Linear``/``Einsum`` kernels) in a :class:`LoRA` node.
    Leaf ``i`` (in flattening order) draws A from ``fold_in(key, i)``: the same key
    gives the same A on every client."""
    select = select or _default_select
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        if select(path, leaf):
            dims = in_dims(path, leaf) if callable(in_dims) else in_dims
            leaf = lora_init(jax.random.fold_in(key, i), leaf, rank=rank, alpha=alpha, in_dims=dims)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def merge_lora(params: Any) -> Any:
    """The plain pytree: every :class:`LoRA` node replaced by :math:`W_0 + \\Delta W`."""
    return jax.tree.map(lambda x: x.w0 + lora_delta(x) if _is_lora(x) else x, params, is_leaf=_is_lora)


def lora_labels(params: Any, *, freeze_a: bool = True) -> Any:
    """``"train"``/``"frozen"`` per leaf: B trained, A trained unless ``freeze_a``
    (FFA-LoRA), every other leaf (``w0``, biases, unwrapped kernels) frozen."""
    def label(x):
        if _is_lora(x):
            return LoRA("frozen", "frozen" if freeze_a else "train", "train", x.scale)
        return jax.tree.map(lambda _: "frozen", x)

    return jax.tree.map(label, params, is_leaf=_is_lora)


def partition(params: Any, labels: Any) -> tuple[Any, Any]:
    """``(trained, frozen)``: the same structure with ``None`` where a leaf belongs to the other part."""
    trained = jax.tree.map(lambda p, l: p if l == "train" else None, params, labels)
    frozen = jax.tree.map(lambda p, l: None if l == "train" else p, params, labels)
    return trained, frozen


def combine(trained: Any, frozen: Any) -> Any:
    """Inverse of :func:`partition`."""
    return jax.tree.map(lambda t, f: f if t is None else t, trained, frozen, is_leaf=lambda x: x is None)


def lora_transform(tx: optax.GradientTransformation, *, freeze_a: bool = True) -> optax.GradientTransformationExtraArgs:
    """``optax.multi_transform``: ``tx`` on the trained leaves (B; A too unless
    ``freeze_a``), ``optax.set_to_zero()`` on the rest (A for FFA-LoRA, ``w0``, biases)."""
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                 lambda p: lora_labels(p, freeze_a=freeze_a))


def per_example_grads(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any, labels: Any) -> Any:
    """Gradients of ``loss_fn(params, example)`` per example (leading batch axis) for
    the trained leaves; zeros of their own shape for the frozen leaves (so
    :func:`lora_transform` of a DP-SGD rule clips over the trained leaves only)."""
    trained, frozen = partition(params, labels)

    def one(example):
        ex = jax.tree.map(lambda a: a[None], example)
        return jax.grad(lambda t: loss_fn(combine(t, frozen), ex))(trained)

    return combine(jax.vmap(one)(batch), jax.tree.map(jnp.zeros_like, frozen))


def _bits_changed(before: Any, after: Any) -> jax.Array:
    """Number of elements whose bit pattern differs (frozen leaves must stay bit-for-bit)."""
    def count(x, y):
        if jnp.issubdtype(jnp.result_type(x), jnp.floating):
            nbits = jnp.dtype(jnp.result_type(x)).itemsize * 8
            ux = jnp.dtype(f"uint{nbits}")
            return jnp.sum(jax.lax.bitcast_convert_type(x, ux) != jax.lax.bitcast_convert_type(y, ux))
        return jnp.sum(x != y)

    return sum((count(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after))), jnp.int32(0))


def lora_client(
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], jax.Array],
    frozen: Any,
    *,
    freeze_a: bool = True,
    local_steps: int,
    batch_size: int,
    per_example: bool = True,
) -> ClientUpdate:
    r"""A federated LoRA client (a :class:`lgrad.federated.ClientUpdate`).

    The server's parameters are the *trained* part of a LoRA pytree (B, and A unless
    ``freeze_a``; ``partition(params, lora_labels(params, freeze_a=...))[0]``); the
    ``frozen`` part (``w0``, biases, and A for FFA-LoRA: the same on every client) is
    a constant. Each round the client rebuilds the full tree, takes K =
    ``local_steps`` steps of :func:`lora_transform` ``(tx)`` on minibatches of
    ``batch_size`` (``per_example=True``: ``tx`` gets :func:`per_example_grads`, as
    DP-SGD needs; else the mean gradient) with ``key=`` a fresh key per step
    (DP-SGD's noise), and sends the change of the trained leaves only.

    ``loss_fn(plain_params, batch)`` is the model's loss on merged weights
    (:func:`merge_lora` is applied for it). Metrics: ``loss`` (mean over the K
    steps) and ``frozen_changed`` (elements of the frozen leaves whose bits changed
    during local training; 0 when freezing works).
    """
    k_steps = check_int(local_steps, "local_steps", minimum=1)
    bs = check_int(batch_size, "batch_size", minimum=1)
    tx = optax.with_extra_args_support(lora_transform(tx, freeze_a=freeze_a))
    objective = lambda p, batch: loss_fn(merge_lora(p), batch)  # noqa: E731

    def apply(server_params, state, arrays, count, key):
        full = combine(server_params, frozen)
        labels = lora_labels(full, freeze_a=freeze_a)

        def step(carry, k):
            p, s = carry
            kb, kn = jax.random.split(k)
            batch = client_minibatch(arrays, count, kb, bs)
            loss = objective(p, batch)
            g = per_example_grads(objective, p, batch, labels) if per_example else jax.grad(objective)(p, batch)
            u, s = tx.update(g, s, p, key=kn)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses = jax.lax.scan(step, (full, tx.init(full)), jax.random.split(key, k_steps))
        trained, frozen_after = partition(p, labels)
        delta = jax.tree.map(lambda a, b: a - b, trained, server_params)
        changed = _bits_changed(partition(full, labels)[1], frozen_after)
        return delta, state, {"loss": jnp.mean(losses), "frozen_changed": changed.astype(jnp.float32)}

    return ClientUpdate(lambda params: (), apply)
