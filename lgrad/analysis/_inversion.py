r"""Gradient inversion: reconstruct a client's batch from the gradient it shares.

Inverting gradients (Geiping, Bauermeister, Dröge & Moeller 2020): given the
shared gradient :math:`g = \nabla_\theta L(x, y)`, find

.. math::

    \hat x = \arg\min_{\hat x \in [0, 1]}\;
      1 - \frac{\langle \nabla_\theta L(\hat x, \hat y), g\rangle}
               {\|\nabla_\theta L(\hat x, \hat y)\|\,\|g\|}
      + \lambda_{TV}\,\mathrm{TV}(\hat x)

by Adam (``lambda_TV = 1e-4`` by default), with the label :math:`\hat y` read off
the last layer's bias gradient where the batch allows (a single example:
:math:`\partial L/\partial b = \mathrm{softmax} - e_y` is negative only at
:math:`y`; Zhao et al. 2020, iDLG).

GIFD-style search (Fang et al. 2023, :func:`gifd_search`): the image is the output
of a pretrained generator :math:`G = g_K \circ \dots \circ g_1`; first its latent
:math:`z` is optimised, then each intermediate feature :math:`h_k` in turn, with the
deviation from the starting feature projected onto an :math:`\ell_1` ball of radius
:math:`r_k` (:func:`project_l1_ball`, Duchi et al. 2008; radii :func:`gifd_radii`),
and the candidate with the lowest matching loss is kept.

Metrics: :func:`psnr` and :func:`ssim` (Wang et al. 2004, uniform window and
sample covariance, as scikit-image's default). The project's account:
``docs/papers/hyperfl-inversion.md``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from lgrad._validation import check_int, is_concrete_number

__all__ = [
    "GIFDResult",
    "InversionResult",
    "gifd_radii",
    "gifd_search",
    "gradient_cosine_loss",
    "infer_label",
    "invert_gradients",
    "matching_objective",
    "project_l1_ball",
    "psnr",
    "ssim",
    "total_variation",
]


_EPS = {2: 1e-6, 4: 1e-30, 8: 1e-200}  # by itemsize: float16/bfloat16, float32, float64


def _flat(tree: Any) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


def gradient_cosine_loss(candidate: Any, target: Any) -> jax.Array:
    r""":math:`1 - \langle a, b\rangle / (\|a\|\,\|b\|)` over all leaves of two gradient pytrees
    (flattened together; 1, with a zero gradient, if either is (numerically) zero)."""
    a, b = _flat(candidate), _flat(target)
    sq = jnp.vdot(a, a) * jnp.vdot(b, b)
    # below eps (a vanishing gradient, e.g. a saturated softmax) the loss is 1 with a zero
    # gradient: 1/|a| would overflow the attacker's gradient to inf and then NaN
    ok = sq > _EPS[a.dtype.itemsize]
    return 1.0 - jnp.where(ok, jnp.vdot(a, b) * jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)


def total_variation(x: jax.Array) -> jax.Array:
    r"""Anisotropic total variation of images ``(..., H, W)``:
    :math:`\mathrm{mean}|x_{i+1,j} - x_{i,j}| + \mathrm{mean}|x_{i,j+1} - x_{i,j}|`
    (Geiping et al.'s form)."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., H, W), got shape {x.shape}")
    return jnp.mean(jnp.abs(jnp.diff(x, axis=-2))) + jnp.mean(jnp.abs(jnp.diff(x, axis=-1)))


def infer_label(bias_grad: jax.Array) -> jax.Array:
    """The label of a single example from the gradient of the last layer's bias under
    softmax cross-entropy: the only negative entry (``argmin``)."""
    return jnp.argmin(jnp.asarray(bias_grad), axis=-1)


def psnr(x: jax.Array, reference: jax.Array, *, max_value: float = 1.0) -> jax.Array:
    r""":math:`10 \log_{10}(\mathrm{max}^2 / \mathrm{MSE})` in dB over the trailing axes
    of one image (leading axes: a batch, one value each)."""
    x, r = jnp.asarray(x), jnp.asarray(reference)
    mse = jnp.mean((x - r) ** 2, axis=tuple(range(max(x.ndim - 2, 0), x.ndim)))
    return 10.0 * jnp.log10(max_value**2 / jnp.maximum(mse, 1e-20))


def _box(x: jax.Array, win: int) -> jax.Array:
    """Mean over every ``win x win`` window of the last two axes ('valid')."""
    c = jnp.cumsum(jnp.cumsum(jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)]), -2), -1)
    s = c[..., win:, win:] - c[..., :-win, win:] - c[..., win:, :-win] + c[..., :-win, :-win]
    return s / (win * win)


def ssim(x: jax.Array, reference: jax.Array, *, max_value: float = 1.0, win_size: int = 7) -> jax.Array:
    r"""Mean structural similarity of images ``(..., H, W)`` (Wang et al. 2004) with a
    uniform ``win_size`` window, sample covariances, :math:`K_1 = 0.01`,
    :math:`K_2 = 0.03` (scikit-image's defaults; windows inside the image only)."""
    win = check_int(win_size, "win_size", minimum=2)
    x, r = jnp.asarray(x, jnp.float32), jnp.asarray(reference, jnp.float32)
    if x.shape[-1] < win or x.shape[-2] < win:
        raise ValueError(f"win_size must be <= the image sides {x.shape[-2:]}, got {win_size}")
    cov = win * win / (win * win - 1.0)
    mx, my = _box(x, win), _box(r, win)
    vx, vy = cov * (_box(x * x, win) - mx * mx), cov * (_box(r * r, win) - my * my)
    vxy = cov * (_box(x * r, win) - mx * my)
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(-2, -1))


def project_l1_ball(v: jax.Array, radius: float) -> jax.Array:
    r"""Euclidean projection of ``v`` (any shape) onto :math:`\{u: \|u\|_1 \le r\}`
    (Duchi, Shalev-Shwartz, Singer & Chandra 2008): with :math:`\mu` the sorted
    :math:`|v|` (descending), :math:`\rho = \max\{j: \mu_j - (\sum_{i \le j}\mu_i - r)/j > 0\}`
    and :math:`\theta = (\sum_{i \le \rho}\mu_i - r)/\rho`, the projection is
    :math:`\mathrm{sign}(v)\max(|v| - \theta, 0)`; ``v`` itself when :math:`\|v\|_1 \le r`.
    ``radius >= 0`` (checked when concrete)."""
    if is_concrete_number(radius) and not float(radius) >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    flat = jnp.ravel(v)
    a = jnp.abs(flat)
    u = jnp.sort(a)[::-1]
    css = jnp.cumsum(u)
    k = jnp.arange(1, u.size + 1)
    rho = jnp.max(jnp.where(u - (css - radius) / k > 0, k, 1))
    theta = jnp.maximum((css[rho - 1] - radius) / rho, 0.0)
    out = jnp.sign(flat) * jnp.maximum(a - theta, 0.0)
    return jnp.where(jnp.sum(a) <= radius, flat, out).reshape(jnp.shape(v))


class InversionResult(NamedTuple):
    """``variables``: the optimised pytree; ``loss``: the objective per step;
    ``skipped``: steps whose gradient was not finite (not applied)."""

    variables: Any
    loss: jax.Array
    skipped: jax.Array


def invert_gradients(
    objective: Callable[[Any], jax.Array],
    init: Any,
    *,
    steps: int,
    learning_rate: float = 0.1,
    project: Callable[[Any], Any] | None = None,
) -> InversionResult:
    r"""Minimise ``objective(variables)`` by Adam for ``steps`` steps (one ``lax.scan``),
    applying ``project`` (e.g. a box ``[0, 1]`` on the image, an :math:`\ell_1` ball on
    a feature deviation) after every step. A step whose gradient is not finite (float32
    overflow where the candidate's softmax saturates) is skipped
    (``optax.apply_if_finite``) and counted in ``skipped``. Build ``objective`` with
    :func:`matching_objective`."""
    n = check_int(steps, "steps", minimum=1)
    tx = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=n + 1)
    proj = project or (lambda v: v)

    def step(carry, _):
        v, s = carry
        loss, g = jax.value_and_grad(objective)(v)
        u, s = tx.update(g, s, v)
        return (proj(optax.apply_updates(v, u)), s), loss

    (v, s), losses = jax.lax.scan(step, (proj(init), tx.init(init)), None, length=n)
    return InversionResult(v, losses, s.total_notfinite)


def matching_objective(
    shared_gradient_fn: Callable[[Any], Any],
    target: Any,
    *,
    image_fn: Callable[[Any], jax.Array],
    tv_weight: float = 1e-4,
) -> Callable[[Any], jax.Array]:
    r"""``variables -> 1 - cos(shared_gradient_fn(variables), target) + tv_weight * TV(image_fn(variables))``:
    the inverting-gradients objective for any parametrisation of the candidate
    (pixels, a generator's latent or features, plus unknowns the attacker also fits)."""
    if not tv_weight >= 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight!r}")

    def objective(v):
        return gradient_cosine_loss(shared_gradient_fn(v), target) + tv_weight * total_variation(image_fn(v))

    return objective



# ----------------------------------------------------------------------------- GIFD
class GIFDResult(NamedTuple):
    """``image``: the best candidate (lowest matching loss); ``latent_image``: the
    latent-only candidate :math:`G(z^*)`; ``images``: every candidate, stacked
    (index 0 the latent search, index k the search in feature k); ``losses``: the
    matching loss of each candidate; ``best``: the index of ``image`` in ``images``;
    ``skipped``: non-finite Adam steps per search (skipped, see :func:`invert_gradients`)."""

    image: jax.Array
    latent_image: jax.Array
    images: jax.Array
    losses: jax.Array
    best: jax.Array
    skipped: jax.Array


def gifd_radii(
    feature_sizes: Sequence[int], *, first: float = 1000.0, last: float = 7500.0, reference_size: int = 8192
) -> list[float]:
    r"""The :math:`\ell_1` radii of GIFD's feature searches, scaled to other feature sizes.

    GIFD grows the radius linearly over the searched layers (:math:`r_1` = ``first``
    to :math:`r_K` = ``last``; 1000 to 7500 in the project's digest) for features of
    a StyleGAN2/BigGAN size. We keep the paper's budget per feature element against
    a reference layer of ``reference_size`` elements (8192 = 512 channels x 4 x 4,
    the first StyleGAN2 synthesis feature) and rescale it to layer :math:`k`'s size
    :math:`n_k`:

    .. math::

        r_k = \Big(r_1 + \frac{k - 1}{K - 1}(r_K - r_1)\Big)\,\frac{n_k}{n_\mathrm{ref}}

    (:math:`r_1` alone when :math:`K = 1`). See ``docs/papers/hyperfl-inversion.md``.
    """
    sizes = [check_int(n, "feature_sizes entries", minimum=1) for n in feature_sizes]
    if not sizes:
        raise ValueError("feature_sizes must name at least one feature layer")
    if not 0 < first <= last:
        raise ValueError(f"need 0 < first <= last, got first={first!r}, last={last!r}")
    ref = check_int(reference_size, "reference_size", minimum=1)
    k = len(sizes)
    steps = [first + (last - first) * i / max(k - 1, 1) for i in range(k)]
    return [r * n / ref for r, n in zip(steps, sizes)]


def _compose(stages: Sequence[Callable], params: Sequence[Any], start: int) -> Callable[[Any], Any]:
    def run(h):
        for stage, p in zip(stages[start:], params[start:]):
            h = stage(p, h)
        return h

    return run


def gifd_search(
    shared_gradient_fn: Callable[[jax.Array], Any],
    target: Any,
    stages: Sequence[Callable[[Any, Any], Any]],
    stage_params: Sequence[Any],
    z0: Any,
    *,
    radii: Sequence[float],
    image_fn: Callable[[jax.Array], jax.Array],
    latent_steps: int,
    feature_steps: int,
    learning_rate: float = 0.1,
    tv_weight: float = 1e-4,
) -> GIFDResult:
    r"""GIFD-style generative gradient inversion (Fang et al. 2023): latent search, then
    a search in each intermediate feature of the generator within a growing
    :math:`\ell_1` ball, keeping the candidate with the lowest matching loss.

    The generator is ``stages`` :math:`g_1, \dots, g_K` (``stages[i](stage_params[i], h)``;
    :math:`h_0 = z`, :math:`h_k = g_k(h_{k-1})`, :math:`G(z) = h_K` the image) and
    :math:`\mathcal L(x) = 1 - \cos(\nabla_\theta L(x, \hat y), g) + \lambda_{TV}\mathrm{TV}(x)`
    the inverting-gradients objective (:func:`matching_objective`; ``shared_gradient_fn``
    maps a candidate image to its gradient, the label inside). Then

    .. math::

        z^* &= \arg\min_z \mathcal L(G(z)) \quad\text{(Adam from } z_0\text{)},\qquad h_0^* = z^*,\\
        h_k^{(0)} &= g_k(h_{k-1}^*),\qquad
        h_k^* = \arg\min_{\|h - h_k^{(0)}\|_1 \le r_k} \mathcal L(g_K \circ \dots \circ g_{k+1}(h)),
        \quad k = 1, \dots, K - 1,

    each by Adam with the deviation :math:`h - h_k^{(0)}` projected onto the
    :math:`\ell_1` ball of radius ``radii[k - 1]`` after every step
    (:func:`project_l1_ball`); the downstream stages stay fixed. The answer is the
    candidate :math:`x_k = g_K \circ \dots \circ g_{k+1}(h_k^*)` (:math:`x_0 = G(z^*)`)
    of lowest :math:`\mathcal L`. Radii for small generators: :func:`gifd_radii`.
    Traceable (jit/vmap); see ``docs/papers/hyperfl-inversion.md``.
    """
    k = len(stages)
    if k < 2:
        raise ValueError(f"stages must hold at least 2 stages (latent -> feature -> image), got {k}")
    if len(stage_params) != k:
        raise ValueError(f"stage_params must have one entry per stage ({k}), got {len(stage_params)}")
    if len(radii) != k - 1:
        raise ValueError(f"radii must have one entry per intermediate feature ({k - 1}), got {len(radii)}")
    if any(is_concrete_number(r) and not float(r) > 0 for r in radii):
        raise ValueError(f"radii must be > 0, got {list(radii)!r}")
    n_lat = check_int(latent_steps, "latent_steps", minimum=1)
    n_feat = check_int(feature_steps, "feature_steps", minimum=1)
    loss_of = matching_objective(shared_gradient_fn, target, image_fn=image_fn, tv_weight=tv_weight)

    res = invert_gradients(lambda z: loss_of(_compose(stages, stage_params, 0)(z)), z0, steps=n_lat,
                           learning_rate=learning_rate)
    h, images, skipped = res.variables, [_compose(stages, stage_params, 0)(res.variables)], [res.skipped]
    for i in range(1, k):
        h0 = stages[i - 1](stage_params[i - 1], h)
        tail = _compose(stages, stage_params, i)
        ball = lambda v, h0=h0, r=radii[i - 1]: jax.tree.map(  # noqa: E731
            lambda a, a0: a0 + project_l1_ball(a - a0, r), v, h0)
        res = invert_gradients(lambda v, tail=tail: loss_of(tail(v)), h0, steps=n_feat,
                               learning_rate=learning_rate, project=ball)
        h = res.variables
        images.append(tail(h))
        skipped.append(res.skipped)
    images = jnp.stack(images)
    losses = jax.vmap(loss_of)(images)
    best = jnp.argmin(losses)
    return GIFDResult(images[best], images[0], images, losses, best, jnp.stack(skipped))
