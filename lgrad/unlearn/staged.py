r"""Multi-stage training in any order, and local unlearning, on ``lgrad.train.fit``.

``train_stages`` runs an ordered selection of ``Stage``s, one ``fit`` call per stage,
carrying the parameters (not the optimizer state) from stage to stage. Stage ``s``
minimises

.. math::
    L_s(\theta) + \mu_s \|\theta - \theta_{\mathrm{prev}}\|_2^2

where :math:`\theta_{\mathrm{prev}}` are the parameters the stage starts from and
:math:`\mu_s` is ``Stage.proximal`` (Yu et al. 2025, Sec. 3: the linear theory's
stages use this proximal term). Each stage draws its minibatches from
``fold_in(key, s)`` with ``s`` the stage's index in ``stages``, so two orders see the
same batches per stage: the order is the only difference between paths.

``unlearn`` runs a local unlearning objective (GA / NPO / SimNPO) on a forget set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_int, check_nonnegative, check_positive
from lgrad.train import FitResult, batch_sampler, fit
from lgrad.unlearn.objectives import gradient_ascent_loss, npo_loss, simnpo_loss

__all__ = ["Stage", "StagedResult", "check_order", "train_stages", "unlearning_loss", "unlearn", "METHODS"]

METHODS = ("ga", "npo", "simnpo")
DEFAULT_BETA = {"npo": 0.5, "simnpo": 1.0}


class Stage(NamedTuple):
    """One training stage: its data, number of steps and optimizer.

    ``data`` is any pytree of arrays with a leading example axis; ``batch_size``
    None trains on the full batch. ``loss_fn`` (``(params, batch) -> scalar``)
    overrides the runner's default loss for this stage. ``proximal`` is mu >= 0.
    """

    data: Any
    steps: int
    optimizer: optax.GradientTransformation
    name: str = ""
    batch_size: int | None = None
    proximal: float = 0.0
    loss_fn: Callable[[Any, Any], Any] | None = None


@dataclasses.dataclass
class StagedResult:
    order: tuple[int, ...]
    params: Any  # after the last stage
    stage_params: list[Any]  # after each stage, in execution order
    histories: list[dict[str, Any]]  # fit history of each stage, in execution order
    key: jax.Array


def check_order(order: Sequence[int], n_stages: int) -> tuple[int, ...]:
    """Validate an ordered selection of distinct stage indices (ValueError otherwise)."""
    try:
        order = tuple(int(i) for i in order)
    except TypeError:
        raise ValueError(f"order must be a sequence of stage indices, got {order!r}") from None
    if not order:
        raise ValueError("order must name at least one stage")
    bad = [i for i in order if not 0 <= i < n_stages]
    if bad:
        raise ValueError(f"order has indices outside [0, {n_stages}): {bad}")
    if len(set(order)) != len(order):
        dup = sorted({i for i in order if order.count(i) > 1})
        raise ValueError(f"order must not repeat a stage (a permutation of stages), but repeats {dup}: {order}")
    return order


def _sqdist(a: Any, b: Any) -> jax.Array:
    return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def train_stages(
    loss_fn: Callable[[Any, Any], Any] | None,
    params: Any,
    stages: Sequence[Stage],
    order: Sequence[int] | None = None,
    *,
    key: jax.Array | None = None,
    cache: dict | None = None,
    progress: Callable[..., Any] | None = None,
) -> StagedResult:
    """Train ``params`` on ``stages`` in ``order`` (default: the given order).

    Args:
      loss_fn: default ``(params, batch) -> scalar`` for stages without their own.
      params: initial parameters (theta_0).
      stages: the stages.
      order: distinct indices into ``stages``. A full permutation gives one
        training path; a strict subset (e.g. all but the forget stage) gives the
        retrain-from-scratch reference. Repeats raise ``ValueError``.
      key: PRNG key; stage ``s`` uses ``fold_in(key, s)``.
      cache: optional dict reused across calls that start from the same
        ``params`` and ``key``: results of order prefixes are stored and reused, so
        a sweep over all permutations trains each distinct prefix once.
      progress: passed to ``fit``.

    Returns:
      ``StagedResult`` with the final and the per-stage parameters.
    """
    stages = list(stages)
    if not stages:
        raise ValueError("stages must not be empty")
    order = check_order(range(len(stages)) if order is None else order, len(stages))
    for i, st in enumerate(stages):
        check_int(st.steps, f"stages[{i}].steps", minimum=0)
        check_nonnegative(st.proximal, f"stages[{i}].proximal")
        if st.loss_fn is None and loss_fn is None:
            raise ValueError(f"stages[{i}] has no loss_fn and no default loss_fn was given")
    if key is None:
        key = jax.random.PRNGKey(0)
    stage_params, histories = [], []
    for pos, s in enumerate(order):
        prefix = order[: pos + 1]
        if cache is not None and prefix in cache:
            params, hist = cache[prefix]
        else:
            st = stages[s]
            base = st.loss_fn if st.loss_fn is not None else loss_fn
            mu = st.proximal
            anchor = params
            if mu:
                def stage_loss(p, b, base=base, anchor=anchor, mu=mu):
                    return base(p, b) + mu * _sqdist(p, anchor)
            else:
                stage_loss = base
            k = jax.random.fold_in(key, s)
            batch_fn = None if st.batch_size is None else batch_sampler(st.data, st.batch_size)
            res = fit(
                stage_loss,
                params,
                st.optimizer,
                steps=st.steps,
                data=st.data if batch_fn is None else None,
                batch_fn=batch_fn,
                key=k,
                progress=progress,
            )
            params, hist = res.params, res.history
            if cache is not None:
                cache[prefix] = (params, hist)
        stage_params.append(params)
        histories.append(hist)
    return StagedResult(order=order, params=params, stage_params=stage_params, histories=histories, key=key)


def unlearning_loss(
    method: str,
    logprob_fn: Callable[[Any, Any], Any],
    *,
    beta: float | None = None,
    ref_params: Any = None,
    batched: bool = False,
) -> Callable[[Any, Any], jax.Array]:
    """``(params, forget_batch) -> loss`` for ``method`` in ``("ga", "npo", "simnpo")``.

    ``logprob_fn(params, batch)`` returns the per-example log-probabilities ``(n,)``.
    NPO needs ``ref_params`` (the frozen model before unlearning); ``beta`` defaults to
    0.5 (NPO) and 1.0 (SimNPO), the paper's values.

    ``batched=True``: ``params`` (and ``ref_params``) carry a leading axis of
    independent models (e.g. one per training path) and the loss is the *sum* of
    the per-model losses, so each model receives exactly its own gradient. With an
    element-wise optimizer (SGD, Adam, ...) one ``fit`` then unlearns all models at
    once, identically to separate runs; rules that couple coordinates (global-norm
    clipping) would mix them.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ga":
        if beta is not None:
            raise ValueError("beta is not used by gradient ascent ('ga'); leave it None")
        single = lambda p, r, b: gradient_ascent_loss(logprob_fn(p, b))
    else:
        beta = DEFAULT_BETA[method] if beta is None else beta
        check_positive(beta, "beta")
        if method == "npo":
            if ref_params is None:
                raise ValueError("NPO needs ref_params (the frozen reference model's parameters)")
            single = lambda p, r, b: npo_loss(logprob_fn(p, b), logprob_fn(r, b), beta=beta)
        else:
            single = lambda p, r, b: simnpo_loss(logprob_fn(p, b), beta=beta)
    frozen = None if ref_params is None else jax.lax.stop_gradient(ref_params)
    if not batched:
        return lambda p, b: single(p, frozen, b)
    return lambda p, b: jnp.sum(jax.vmap(lambda pi, ri: single(pi, ri, b))(p, frozen if frozen is not None else p))


def unlearn(
    method: str,
    logprob_fn: Callable[[Any, Any], Any],
    params: Any,
    forget_data: Any,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    beta: float | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    eval_fn: Callable[[Any], dict[str, Any]] | None = None,
    eval_every: int = 0,
    record_params: bool = False,
    batched: bool = False,
) -> FitResult:
    """Local unlearning: ``steps`` steps of ``method`` on ``forget_data`` from ``params``.

    Only forget-set log-probabilities enter the loss (a *local* method). The NPO
    reference model is ``params`` itself (the frozen model before unlearning).
    ``batched=True`` unlearns a stack of independent models at once (see
    ``unlearning_loss``). Raises ``ValueError`` for an empty forget set, an unknown
    method or ``beta <= 0``.
    """
    leaves = jax.tree.leaves(forget_data)
    if not leaves or any(jnp.shape(x)[0] == 0 for x in leaves):
        raise ValueError("forget_data is empty: the forget set must contain at least one example")
    check_int(steps, "steps", minimum=0)
    if method == "npo":
        # The frozen reference's log-probs on the forget set are computed once here and
        # travel with the data (rows sampled together), instead of re-running the
        # reference model inside every step (and inside XLA's constant folding).
        beta = DEFAULT_BETA["npo"] if beta is None else beta
        check_positive(beta, "beta")
        ref_fn = jax.jit(jax.vmap(logprob_fn, in_axes=(0, None)) if batched else logprob_fn)
        ref_logp = jax.lax.stop_gradient(ref_fn(params, forget_data))
        if batched:  # rows first, models second, so that minibatches take rows
            ref_logp = jnp.moveaxis(ref_logp, 0, 1)
        data = (forget_data, ref_logp)

        def single(p, b, r):
            return npo_loss(logprob_fn(p, b), r, beta=beta)

        if batched:
            loss = lambda p, d: jnp.sum(jax.vmap(single, in_axes=(0, None, 1))(p, d[0], d[1]))
        else:
            loss = lambda p, d: single(p, d[0], d[1])
    else:
        loss = unlearning_loss(method, logprob_fn, beta=beta, batched=batched)
        data = forget_data
    batch_fn = None if batch_size is None else batch_sampler(data, batch_size)
    return fit(
        loss,
        params,
        optimizer,
        steps=steps,
        data=data if batch_fn is None else None,
        batch_fn=batch_fn,
        key=key,
        eval_fn=eval_fn,
        eval_every=eval_every,
        record_params=record_params,
    )
