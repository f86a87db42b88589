r"""Layer-local learning rules: a local loss (and auxiliary net) for every hidden block.

Every rule maps hidden block :math:`k` (output :math:`h_k`, input
:math:`\mathrm{sg}(h_{k-1})`, :math:`\mathrm{sg}` = ``stop_gradient``) to a local loss
:math:`J_k`; the last block (the classifier, producing logits) is trained with the
ordinary cross-entropy on its stop-gradient input. Block :math:`k`'s update is
:math:`\nabla_{\theta_k} J_k` and nothing else (exact gradient isolation).

.. math::

   \text{DRTP:}\quad J_k = \tfrac1B\textstyle\sum_b \langle \mathrm{sg}(B_k y^*_b), h_{k,b}\rangle
   \;\Rightarrow\; \Delta W_k = -\eta\,[(B_k y^*) \odot f'(z_k)]\, h_{k-1}^\top

   \text{tpSGD:}\quad J_k = L(h_k, P_k y^*),\; L \in \{\ell_2, \ell_1\},\ \text{or}\
   \mathrm{CE}(P_k^\top h_k, y)

   \text{InfoPro:}\quad J_k = \lambda_1(k)\,\mathrm{BCE}(\mathrm{Dec}_k(h_k), x) + \lambda_2(k)\,\mathrm{CE}(\mathrm{Aux}_k(h_k), y)

   \text{feature reconstruction:}\quad J_k = \lambda_1(k)\,\|\mathrm{Dec}_k(h_k) - \mathrm{sg}(h_{k-1})\|^2 + \lambda_2(k)\,\mathrm{CE}(\mathrm{Aux}_k(h_k), y)

   \text{AugLocal:}\quad J_l = \mathrm{CE}(\tilde f_{i_d}\circ\cdots\circ\tilde f_{i_1}(h_l), y),\quad
   i_j = \mathrm{round}\big(l + \tfrac{n-l-1}{d} j\big)

   \text{MAN:}\quad J_i = \mathrm{CE}\big(\mathrm{Aux}_i(f_{i+1}(h_i; \mathrm{sg}\,\theta^{EMA}) + f_{i+1}(h_i; \theta^{LB})), y\big),\;
   \theta^{EMA} \leftarrow m\,\theta^{EMA} + (1-m)\,\theta_{i+1}

Projections :math:`P_k` (and DRTP's :math:`B_k^\top`) have shape
``(num_classes, prod(block k output shape))`` (for tpSGD on sequences with
``per_time_step=True``: ``(num_classes, features)``, the same target at every step).

References: Frenkel et al. 2021 (DRTP, Eq. 2-3); "Learning with Local Gradients at the
Edge" (tpSGD, layer-wise target projection, RNN extension); Wang et al. 2021 (InfoPro,
Eq. 6-7, λ interpolated linearly between the first and last local module as in the
authors' code); Pathak et al. 2023 (local learning on transformers via feature
reconstruction); Ma et al. 2024 (AugLocal, ICLR, uniform layer selection Eq. 4 and the
pyramidal depth); Su et al. 2024 (MAN, EMA of the next block + learnable bias). See
``docs/papers/local-tpsgd-drtp.md``, ``local-infopro.md``, ``local-feature-reconstruction.md``,
``local-auglocal.md`` and ``local-man.md`` (section "What we implement").

Example::

    import lgrad.local as ll
    rule = ll.tpsgd(loss="l2")            # or ll.make_rule("tpsgd", loss="l2")
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_in_interval, check_int, check_nonnegative
from lgrad.local.blocks import Block, chain_shapes, classifier_head, decoder_head, fresh_copy

__all__ = [
    "LocalRule",
    "Spec",
    "LocalBatch",
    "backprop",
    "drtp",
    "tpsgd",
    "infopro",
    "feature_reconstruction",
    "auglocal",
    "man",
    "make_rule",
    "RULES",
    "auglocal_indices",
    "auglocal_depths",
    "linear_schedule",
]

sg = jax.lax.stop_gradient


class LocalBatch(NamedTuple):
    x: jax.Array  # inputs, (B, *input_shape)
    y: jax.Array  # int labels, (B,)
    onehot: jax.Array  # (B, C)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a rule sees of the model at construction."""

    blocks: tuple[Block, ...]
    input_shape: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]  # per-example output shape of each block
    num_classes: int

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def in_shape(self, k: int) -> tuple[int, ...]:
        return self.input_shape if k == 0 else self.shapes[k - 1]


@dataclasses.dataclass(frozen=True)
class Bound:
    """A rule bound to a model: initial aux params/state and the per-block losses."""

    aux: list  # trainable aux params per block ({} where none)
    state: Any  # non-trainable rule state (projections, EMA copies)
    # losses[k](out, aux_k, h_in, batch, state) -> scalar, for hidden blocks k
    losses: list
    after_update: Callable[[Any, Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class LocalRule:
    """A named local rule: ``setup(key, spec) -> Bound`` (validates at construction)."""

    name: str
    setup: Callable[[jax.Array, Spec], Bound]
    end_to_end: bool = False
    options: dict = dataclasses.field(default_factory=dict)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def linear_schedule(first: float, last: float, n_hidden: int) -> list[float]:
    """``first`` at hidden block 0 moving linearly to ``last`` at the last hidden block."""
    if n_hidden <= 1:
        return [float(first)] * max(n_hidden, 0)
    return [float(first + (last - first) * k / (n_hidden - 1)) for k in range(n_hidden)]


# ---- backprop (the baseline through the same API) -----------------------------------
def backprop() -> LocalRule:
    """End-to-end backpropagation of the cross-entropy (the baseline)."""

    def setup(key, spec):
        return Bound(aux=[{} for _ in spec.blocks], state={}, losses=[None] * spec.n_blocks)

    return LocalRule("backprop", setup, end_to_end=True)


# ---- projections ----------------------------------------------------------------------
def _projection_shapes(spec: Spec, per_time_step: bool) -> list[tuple[int, int]]:
    out = []
    for s in spec.shapes[:-1]:
        d = s[-1] if (per_time_step and len(s) == 2) else int(np.prod(s))
        out.append((spec.num_classes, d))
    return out


def _projections(key, spec: Spec, given: Sequence[Any] | None, per_time_step: bool, scale: float, name: str):
    want = _projection_shapes(spec, per_time_step)
    if given is None:
        keys = jax.random.split(key, max(len(want), 1))
        return [scale * jax.random.normal(k, s) for k, s in zip(keys, want)]
    given = list(given)
    if len(given) != len(want):
        raise ValueError(
            f"{name}: projections must hold one matrix per hidden block ({len(want)}), got {len(given)}"
        )
    out = []
    for k, (p, s) in enumerate(zip(given, want)):
        if tuple(np.shape(p)) != s:
            raise ValueError(
                f"{name}: projections[{k}] must have shape (num_classes, block {k} output size) = {s}, "
                f"got {tuple(np.shape(p))}"
            )
        out.append(jnp.asarray(p, jnp.float32))
    return out


def _project(onehot, P, out_shape_batch, per_step: bool):
    t = onehot @ P
    if per_step:  # same target at every time step
        return jnp.broadcast_to(t[:, None, :], out_shape_batch)
    return t.reshape(out_shape_batch)


# ---- DRTP --------------------------------------------------------------------------------
def drtp(*, projections: Sequence[Any] | None = None, scale: float = 1.0) -> LocalRule:
    r"""Direct Random Target Projection (Frenkel et al. 2021, Eq. 2-3; ``docs/papers/local-tpsgd-drtp.md``).

    The error of hidden block :math:`k` is replaced by the fixed random projection of
    the one-hot label, :math:`\delta z_k = (B_k y^*) \odot f'(z_k)`; implemented as the
    surrogate :math:`J_k = \frac1B\sum_b\langle \mathrm{sg}(B_k y^*_b), h_{k,b}\rangle`,
    whose gradient is exactly the DRTP update. ``projections[k]`` is :math:`B_k^\top`,
    shape ``(num_classes, prod(out_shape_k))``; default :math:`\mathcal N(0, \text{scale}^2)`.
    """
    check_nonnegative(scale, "scale")

    def setup(key, spec):
        P = _projections(key, spec, projections, False, scale, "drtp")

        def make(k):
            def loss(out, aux, h_in, batch, state):
                e = _project(batch.onehot, state["P"][k], out.shape, False)
                return jnp.sum(sg(e) * out) / out.shape[0]

            return loss

        losses = [make(k) for k in range(spec.n_blocks - 1)] + [None]
        return Bound(aux=[{} for _ in spec.blocks], state={"P": P}, losses=losses)

    return LocalRule("drtp", setup, options=dict(scale=scale))


# ---- tpSGD -------------------------------------------------------------------------------
TPSGD_LOSSES = ("l2", "l1", "ce")


def tpsgd(
    *, loss: str = "l2", projections: Sequence[Any] | None = None, scale: float = 1.0, per_time_step: bool = True
) -> LocalRule:
    r"""Target-projection SGD: :math:`J_k = L(h_k, P_k y^*)` with fixed random :math:`P_k`.

    ``loss``: ``"l2"`` (mean squared error), ``"l1"`` (mean absolute error) or ``"ce"``
    (cross-entropy of the fixed projected head :math:`P_k h_k`, i.e. logits
    ``h_flat @ projections[k].T``). With ``per_time_step`` a block whose per-example
    output is a sequence ``(T, F)`` gets the target :math:`P_k y^*` at every time step
    (the paper's RNN extension), ``projections[k]`` of shape ``(num_classes, F)``.
    """
    if loss not in TPSGD_LOSSES:
        raise ValueError(f"tpsgd: loss must be one of {TPSGD_LOSSES}, got {loss!r}")
    check_nonnegative(scale, "scale")

    def setup(key, spec):
        P = _projections(key, spec, projections, per_time_step, scale, "tpsgd")

        def make(k):
            per_step = per_time_step and len(spec.shapes[k]) == 2

            def local(out, aux, h_in, batch, state):
                Pk = state["P"][k]
                if loss == "ce":
                    if per_step:
                        logits = jnp.einsum("btf,cf->btc", out, Pk)
                        return optax.softmax_cross_entropy(logits, batch.onehot[:, None, :]).mean()
                    return cross_entropy(out.reshape(out.shape[0], -1) @ Pk.T, batch.y)
                t = sg(_project(batch.onehot, Pk, out.shape, per_step))
                return jnp.mean(jnp.square(out - t)) if loss == "l2" else jnp.mean(jnp.abs(out - t))

            return local

        losses = [make(k) for k in range(spec.n_blocks - 1)] + [None]
        return Bound(aux=[{} for _ in spec.blocks], state={"P": P}, losses=losses)

    return LocalRule("tpsgd", setup, options=dict(loss=loss, scale=scale, per_time_step=per_time_step))


# ---- InfoPro / feature reconstruction ------------------------------------------------
def _check_pair(x, name):
    try:
        a, b = x
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (first block, last hidden block), got {x!r}") from None
    check_nonnegative(a, name)
    check_nonnegative(b, name)
    return float(a), float(b)


def _recon_rule(name: str, target: str, recon_weight, cls_weight, head_width: int) -> LocalRule:
    r1 = _check_pair(recon_weight, "recon_weight")
    r2 = _check_pair(cls_weight, "cls_weight")
    check_int(head_width, "head_width", minimum=1)

    def setup(key, spec):
        n_hidden = spec.n_blocks - 1
        lam1, lam2 = linear_schedule(*r1, n_hidden), linear_schedule(*r2, n_hidden)
        aux, losses = [], []
        for k in range(n_hidden):
            kd, kc, key = jax.random.split(key, 3)
            tgt_shape = spec.input_shape if target == "image" else spec.in_shape(k)
            dec_p, dec = decoder_head(kd, spec.shapes[k], tgt_shape)
            cls_p, cls = classifier_head(kc, spec.shapes[k], spec.num_classes, width=head_width)
            aux.append({"dec": dec_p, "cls": cls_p})

            def local(out, a, h_in, batch, state, _dec=dec, _cls=cls, _l1=lam1[k], _l2=lam2[k]):
                rec = _dec(a["dec"], out)
                if target == "image":  # BCE(sigmoid(rec), x), inputs in [0, 1]
                    r = jnp.mean(jax.nn.softplus(rec) - batch.x * rec)
                else:
                    r = jnp.mean(jnp.square(rec - sg(h_in)))
                return _l1 * r + _l2 * cross_entropy(_cls(a["cls"], out), batch.y)

            losses.append(local)
        return Bound(aux=aux + [{}], state={}, losses=losses + [None])

    return LocalRule(name, setup, options=dict(recon_weight=r1, cls_weight=r2, head_width=head_width))


def infopro(*, recon_weight=(1.0, 0.0), cls_weight=(1.0, 1.0), head_width: int = 32) -> LocalRule:
    r"""InfoPro (Wang et al. 2021): :math:`\lambda_1 \mathrm{BCE}(\mathrm{Dec}(h_k), x) + \lambda_2 \mathrm{CE}(\mathrm{Aux}(h_k), y)`.

    ``recon_weight`` / ``cls_weight``: λ1, λ2 at the first and the last hidden block,
    interpolated linearly in between (``docs/papers/local-infopro.md#what-we-implement``). Inputs must lie in [0, 1].
    """
    return _recon_rule("infopro", "image", recon_weight, cls_weight, head_width)


def feature_reconstruction(*, recon_weight=(1.0, 1.0), cls_weight=(1.0, 1.0), head_width: int = 32) -> LocalRule:
    r"""Feature reconstruction (Pathak et al. 2023): InfoPro with the image target replaced
    by the block's input features :math:`\mathrm{sg}(h_{k-1})` (mean squared error)."""
    return _recon_rule("feature_reconstruction", "features", recon_weight, cls_weight, head_width)


# ---- AugLocal ---------------------------------------------------------------------------
def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def auglocal_indices(layer: int, n_layers: int, depth: int) -> list[int]:
    r"""Layers copied into the auxiliary net of hidden layer ``layer`` (AugLocal Eq. 4):
    :math:`i_j = \mathrm{round}(l + (n-l-1) j / d)`, :math:`j=1..d` (half rounds up);
    all later layers when :math:`d \ge n-1-l`. ``docs/papers/local-auglocal.md``: n=16, d=3: l=0 -> [5, 10, 15];
    l=10 -> [12, 13, 15]."""
    check_int(n_layers, "n_layers", minimum=2)
    check_int(layer, "layer", minimum=0)
    check_int(depth, "depth", minimum=1)
    if layer > n_layers - 2:
        raise ValueError(f"layer must be a hidden layer in [0, {n_layers - 2}], got {layer}")
    rest = n_layers - 1 - layer
    if depth >= rest:
        return list(range(layer + 1, n_layers))
    return [_round_half_up(layer + rest / depth * j) for j in range(1, depth + 1)]


def auglocal_depths(n_layers: int, depth: int, *, gamma: float = 0.5, min_depth: int = 1) -> list[int]:
    r"""Pyramidal depth: :math:`d_l = \max(d_{min}, \mathrm{round}(d\,(1 - \gamma\, l/(n-1))))`
    for hidden layers :math:`l = 0..n-2` (depth shrinks linearly with l; γ = 0.5 is the
    coefficient of ``docs/papers/local-auglocal.md#what-we-implement``; the exact rounding is our reading of the paper)."""
    check_int(n_layers, "n_layers", minimum=2)
    check_int(depth, "depth", minimum=1)
    check_int(min_depth, "min_depth", minimum=1)
    check_in_interval(gamma, "gamma", 0.0, 1.0, high_closed=True)
    return [max(min_depth, _round_half_up(depth * (1 - gamma * l / (n_layers - 1)))) for l in range(n_layers - 1)]


def auglocal(*, depth: int = 3, gamma: float = 0.5, min_depth: int = 1) -> LocalRule:
    r"""AugLocal (Ma et al. 2024): the auxiliary net of hidden block ``l`` is fresh copies
    (:func:`lgrad.local.blocks.fresh_copy`) of the blocks :func:`auglocal_indices` picks,
    with the pyramidal depth :func:`auglocal_depths`; the last index is always the
    classifier block, so the auxiliary net ends in logits. The copies must chain on
    block ``l``'s output (checked at construction)."""
    check_int(depth, "depth", minimum=1)
    check_int(min_depth, "min_depth", minimum=1)
    check_in_interval(gamma, "gamma", 0.0, 1.0, high_closed=True)

    def setup(key, spec):
        n = spec.n_blocks
        depths = auglocal_depths(n, depth, gamma=gamma, min_depth=min_depth)
        aux, losses, plan = [], [], []
        for l in range(n - 1):
            idx = auglocal_indices(l, n, depths[l])
            keys = jax.random.split(jax.random.fold_in(key, l), len(idx))
            copies = [Block(spec.blocks[j].apply, fresh_copy(kk, spec.blocks[j].params), f"copy of block {j}") for kk, j in zip(keys, idx)]
            chain_shapes(copies, spec.shapes[l], what=f"auglocal auxiliary net of block {l} (copies of blocks {idx})")
            aux.append([c.params for c in copies])
            plan.append(idx)

            def local(out, a, h_in, batch, state, _idx=tuple(idx)):
                h = out
                for j, p in zip(_idx, a):
                    h = spec.blocks[j].apply(p, h)
                return cross_entropy(h, batch.y)

            losses.append(local)
        return Bound(aux=aux + [{}], state={}, losses=losses + [None])

    return LocalRule("auglocal", setup, options=dict(depth=depth, gamma=gamma, min_depth=min_depth))


# ---- MAN --------------------------------------------------------------------------------
def ema_update(ema: Any, target: Any, momentum: float) -> Any:
    r""":math:`\theta^{EMA} \leftarrow m\,\theta^{EMA} + (1-m)\,\theta` leaf by leaf."""
    return jax.tree.map(lambda e, t: momentum * e + (1.0 - momentum) * t, ema, target)


def man(*, momentum: float = 0.999, head_width: int = 32) -> LocalRule:
    r"""Momentum Auxiliary Network (Su et al. 2024).

    Hidden block :math:`i`'s auxiliary net starts with the next block :math:`f_{i+1}`
    applied twice and summed: once with an EMA copy of block :math:`i+1`'s parameters
    (no gradient; updated after every optimizer step, ``momentum`` m) and once with a
    trainable copy (the "learnable bias", initialised as a fresh copy), followed by a
    classifier head (none when block :math:`i+1` is the classifier). In our block API a
    block is the unit, so "the next block's first layer" is the whole next block.
    """
    check_in_interval(momentum, "momentum", 0.0, 1.0, high_closed=True)
    check_int(head_width, "head_width", minimum=1)

    def setup(key, spec):
        n = spec.n_blocks
        aux, losses, ema = [], [], []
        for i in range(n - 1):
            kb, kh, key = jax.random.split(key, 3)
            nxt = spec.blocks[i + 1]
            ema.append(jax.tree.map(jnp.asarray, nxt.params))
            a = {"lb": fresh_copy(kb, nxt.params)}
            head = None
            if i + 1 < n - 1:
                a["head"], head = classifier_head(kh, spec.shapes[i + 1], spec.num_classes, width=head_width)
            aux.append(a)

            def local(out, a, h_in, batch, state, _i=i, _nxt=nxt, _head=head):
                z = _nxt.apply(sg(state["ema"][_i]), out) + _nxt.apply(a["lb"], out)
                logits = _head(a["head"], z) if _head is not None else z
                return cross_entropy(logits, batch.y)

            losses.append(local)

        def after_update(params, state):
            new = [ema_update(state["ema"][i], params["blocks"][i + 1], momentum) for i in range(n - 1)]
            return {**state, "ema": new}

        return Bound(aux=aux + [{}], state={"ema": ema}, losses=losses + [None], after_update=after_update)

    return LocalRule("man", setup, options=dict(momentum=momentum, head_width=head_width))


RULES: dict[str, Callable[..., LocalRule]] = {
    "backprop": backprop,
    "drtp": drtp,
    "tpsgd": tpsgd,
    "infopro": infopro,
    "feature_reconstruction": feature_reconstruction,
    "auglocal": auglocal,
    "man": man,
}


def make_rule(name: str, **options: Any) -> LocalRule:
    """The rule called ``name`` (one of :data:`RULES`) with keyword ``options``."""
    key = str(name).lower().replace("-", "_")
    if key not in RULES:
        raise ValueError(f"unknown local rule {name!r}; known rules: {', '.join(RULES)}")
    return RULES[key](**options)
