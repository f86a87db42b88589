r"""Byzantine attacks: model-level (vectors) and data-level (labels, inputs).

Model-level attacks follow byzfl's convention: they take the stacked honest
vectors ``honest`` of shape (h, d) and return ONE (d,) vector that every
Byzantine worker sends (the omniscient setting of Allouah et al. 2023 /
Farhadkhani et al. 2023):

* :func:`sign_flip`: :math:`-\bar x` (the negated honest mean);
* :func:`alie` ("a little is enough", Baruch et al. 2019):
  :math:`\bar x + \tau\,\sigma` with :math:`\sigma` the coordinate-wise standard
  deviation, ddof = 1;
* :func:`foe` ("fall of empires" / inner-product manipulation, Xie et al. 2020):
  :math:`-\tau\,\bar x`;
* :func:`gaussian_noise`: a worker's own vector plus :math:`\mathcal N(0,\sigma^2 I)`
  (MUD-HoG's additive-noise attacker).

:func:`line_search` picks the factor :math:`\tau` of ALIE/FOE from a grid to
maximise the distance between the defence's output and the honest mean, as the
MoNNA authors' code does (their "optimal" ALIE/FOE).

Data-level attacks act on a worker's local data: :func:`label_flip`
(:math:`y \mapsto K-1-y`, the MoNNA/byzfl convention), :func:`multi_label_flip`
(several source classes relabelled as one target, MUD-HoG), and
:func:`unreliable` (benign clients with low-quality data: Gaussian pixel noise
and/or box blur, MUD-HoG).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgrad._validation import check_int, check_nonnegative, check_positive

__all__ = [
    "sign_flip",
    "alie",
    "foe",
    "gaussian_noise",
    "line_search",
    "ATTACKS",
    "label_flip",
    "multi_label_flip",
    "unreliable",
]


def _honest(honest: Any) -> jax.Array:
    h = jnp.asarray(honest)
    if h.ndim != 2 or h.shape[0] < 1:
        raise ValueError(f"honest must be a stack of vectors of shape (h, d) with h >= 1, got shape {h.shape}")
    return h


def sign_flip(honest: jax.Array) -> jax.Array:
    r"""Sign flipping: :math:`-\frac1h\sum_j x_j`."""
    return -jnp.mean(_honest(honest), axis=0)


def alie(honest: jax.Array, tau: float = 1.5) -> jax.Array:
    r"""A little is enough: :math:`\bar x + \tau\,\mathrm{std}(x)` (coordinate-wise,
    ddof = 1; needs h >= 2)."""
    h = _honest(honest)
    if h.shape[0] < 2:
        raise ValueError("alie needs at least 2 honest vectors (std with ddof=1)")
    return jnp.mean(h, axis=0) + tau * jnp.std(h, axis=0, ddof=1)


def foe(honest: jax.Array, tau: float = 2.0) -> jax.Array:
    r"""Fall of empires / inner-product manipulation: :math:`-\tau\,\bar x`."""
    return -tau * jnp.mean(_honest(honest), axis=0)


def gaussian_noise(x: jax.Array, key: jax.Array, sigma: float = 1.0) -> jax.Array:
    r"""Additive noise: :math:`x + \sigma\,\xi`, :math:`\xi \sim \mathcal N(0, I)`."""
    check_nonnegative(sigma, "sigma")
    x = jnp.asarray(x)
    return x + sigma * jax.random.normal(key, x.shape, x.dtype)


ATTACKS: dict[str, Callable[..., jax.Array]] = {"sign_flip": sign_flip, "alie": alie, "foe": foe}


def line_search(
    attack: Callable[[jax.Array, Any], jax.Array],
    aggregator: Callable[[jax.Array], jax.Array],
    honest: jax.Array,
    f: int,
    taus: Sequence[float] | jax.Array = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
    *,
    target: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""The attack vector whose factor maximises the damage to ``aggregator``.

    For every :math:`\tau` in ``taus`` the f Byzantine rows are ``attack(honest, tau)``
    and the damage is :math:`\|\mathrm{agg}([x_{\text{honest}}; a_\tau, \dots]) - t\|`
    with :math:`t` = ``target`` (default the honest mean). Returns ``(vector, tau)``.
    jit-safe (the grid is vmapped).
    """
    h = _honest(honest)
    f = check_int(f, "f", minimum=1)
    taus = jnp.asarray(taus, h.dtype)
    t = jnp.mean(h, axis=0) if target is None else target

    def damage(tau):
        a = attack(h, tau)
        x = jnp.concatenate([h, jnp.broadcast_to(a, (f, h.shape[1]))], axis=0)
        out = aggregator(x)
        err = jnp.linalg.norm(out - t)
        return jnp.where(jnp.isfinite(err), err, -jnp.inf), a

    dmg, vecs = jax.vmap(damage)(taus)
    k = jnp.argmax(dmg)
    return vecs[k], taus[k]


# ----------------------------------------------------------------------------- data level
def label_flip(y: Any, num_classes: int) -> Any:
    """Every label :math:`y \\mapsto K - 1 - y` (K = ``num_classes``)."""
    check_int(num_classes, "num_classes", minimum=2)
    return num_classes - 1 - y


def multi_label_flip(y: Any, sources: Sequence[int], target: int) -> Any:
    """Relabel every sample of the ``sources`` classes as ``target`` (targeted;
    ``sources`` of length 1 is MUD-HoG's label flipping)."""
    if len(sources) == 0:
        raise ValueError("sources must name at least one class")
    src = np.asarray(sources)
    hit = (y[..., None] == src).any(-1) if isinstance(y, np.ndarray) else jnp.isin(y, jnp.asarray(src))
    return (np.where if isinstance(y, np.ndarray) else jnp.where)(hit, target, y)


def unreliable(
    x: jax.Array,
    key: jax.Array,
    *,
    noise_std: float = 0.0,
    blur: int = 0,
    image_shape: tuple[int, int] | None = None,
    fraction: float = 1.0,
) -> jax.Array:
    """Low-quality copies of inputs ``x`` (rows are samples): a box blur of width
    ``2*blur+1`` on the ``image_shape`` images, then Gaussian noise of std
    ``noise_std``, applied to a random ``fraction`` of the rows. Values are clipped
    to the input's range."""
    check_nonnegative(noise_std, "noise_std")
    blur = check_int(blur, "blur", minimum=0)
    check_positive(fraction, "fraction")
    x = jnp.asarray(x)
    k_noise, k_pick = jax.random.split(key)
    out = x
    if blur:
        if image_shape is None:
            side = int(round(np.sqrt(x.shape[-1])))
            if side * side != x.shape[-1]:
                raise ValueError("image_shape is needed to blur non-square inputs")
            image_shape = (side, side)
        imgs = out.reshape((-1,) + tuple(image_shape))
        w = 2 * blur + 1
        kern = jnp.ones((w, w), x.dtype) / (w * w)
        imgs = jax.vmap(lambda im: jax.scipy.signal.convolve2d(im, kern, mode="same"))(imgs)
        out = imgs.reshape(x.shape)
    if noise_std:
        out = out + noise_std * jax.random.normal(k_noise, x.shape, x.dtype)
    out = jnp.clip(out, jnp.min(x), jnp.max(x))
    if fraction < 1.0:
        pick = jax.random.uniform(k_pick, x.shape[:1]) < fraction
        out = jnp.where(pick.reshape((-1,) + (1,) * (x.ndim - 1)), out, x)
    return out
