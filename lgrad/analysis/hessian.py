r"""Curvature of ``loss(params, batch)`` over pytrees: HVPs, spectra, traces, densities.

Everything here works on a :class:`LinearOperator` — a symmetric matrix that is only
ever touched through matrix-vector products on a flat vector — so memory stays
O(#params) (Lanczos keeps a bounded basis of ``m`` vectors, i.e. O(m · #params)).
Operators are built from a loss or a model:

* :func:`hessian_operator` — :math:`H = \nabla^2_\theta L`, products by
  forward-over-reverse differentiation (:func:`hvp`).
* :func:`gauss_newton_operator` — :math:`G = \frac1N\sum_n J_n^\top H^{out}_n J_n`
  (Sagun et al. 2017, Sec. 3; Martens 2014 eq. 8), :math:`H^{out} = \mathrm{diag}(s) - s s^\top`
  for softmax cross-entropy, :math:`I` for the half squared error.
* :func:`fisher_operator` — empirical Fisher :math:`\frac1N\sum_n g_n g_n^\top` (data
  labels) or true Fisher (labels drawn from the model; equals ``G`` for both losses).

All constructors take ``mask=`` (a pytree of Python bools with the structure of
``params``: restrict the operator to the selected leaves, e.g. one layer) and
``batched=True`` (every leaf of ``batch`` carries a leading axis of ``B`` batches; the
operator is the average of the per-batch operators, accumulated sequentially by
``lax.scan`` so that memory does not grow with ``B``).

Algorithms on an operator:

* :func:`lanczos` — top-k / bottom-k eigenpairs, thick-restart Lanczos (Wu & Simon
  2000) with full reorthogonalisation (Golub & Van Loan, Alg. 10.1.1 with
  twice-applied classical Gram-Schmidt), stopping when the Ritz residuals reach
  ``rtol`` (docs/papers/hessian-spectrum.md). Eigenvectors are returned as pytrees.
  When the Krylov space becomes invariant (``beta_j ~ 0``) the iteration continues
  from a fresh random vector orthogonal to the basis with a zero coupling, so
  nothing becomes NaN.
* :func:`spectral_density` — stochastic Lanczos quadrature (Lin, Saad & Yang 2016,
  eq. 3.7; Ghorbani et al. 2019, eq. 6): :math:`\phi(t) \approx \frac1{P}\sum_p\sum_i
  \tau^{(p)}_i\, g_\sigma(t-\theta^{(p)}_i)` with Ritz values :math:`\theta` and
  weights :math:`\tau_i = (e_1^\top y_i)^2`, Gaussian broadening :math:`g_\sigma`.
* :func:`hutchinson_trace` (:math:`\mathbb E[z^\top A z] = \mathrm{tr} A`, Rademacher ``z``),
  :func:`hutchpp_trace` (Meyer et al. 2021, Algorithm 1),
  :func:`diagonal_estimate` (Bekas et al. 2007, eq. 2.1: :math:`\mathbb E[z \odot A z]`).
* :func:`dense_matrix` / :func:`hessian_matrix` — the exact matrix for small models.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from lgrad.analysis import hessian as hs
  >>> params = {"w": jnp.ones(3)}
  >>> loss = lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2)
  >>> op = hs.hessian_operator(loss, params, jnp.array([1.0, 2.0, 3.0]))
  >>> res = hs.lanczos(op, 2, key=jax.random.PRNGKey(0))
  >>> [round(float(x), 4) for x in res.eigenvalues]
  [3.0, 2.0]
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "LinearOperator",
    "LanczosResult",
    "SpectralDensity",
    "hvp",
    "ravel_pytree",
    "masked_ravel",
    "hessian_operator",
    "gauss_newton_operator",
    "fisher_operator",
    "matrix_operator",
    "dense_matrix",
    "hessian_matrix",
    "lanczos",
    "lanczos_tridiag",
    "spectral_density",
    "gaussian_density",
    "hutchinson_trace",
    "hutchpp_trace",
    "diagonal_estimate",
    "cross_entropy_loss",
    "mse_loss",
]


# ----------------------------------------------------------------------------- helpers
def hvp(loss: Callable[[Any, Any], jax.Array], params: Any, batch: Any, v: Any) -> Any:
    r"""Hessian-vector product :math:`\nabla^2_\theta L(\theta)\, v` by forward-over-reverse.

    ``jax.jvp`` of ``jax.grad(loss)``: one forward and one reverse pass with dual
    numbers, about 2-3x the cost of a gradient and no O(n^2) memory. ``v`` has the
    structure of ``params``; the result too.
    """
    _check_scalar_loss(loss, params, batch)
    return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (v,))[1]


def _check_scalar_loss(loss: Callable, params: Any, batch: Any) -> None:
    out = jax.eval_shape(loss, params, batch)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"loss must return a scalar, got output of shape {shape}")


def _check_mask(params: Any, mask: Any) -> list[bool]:
    leaves, treedef = jax.tree.flatten(params)
    if mask is None:
        return [True] * len(leaves)
    try:
        mleaves, mdef = jax.tree.flatten(mask)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"mask must be a pytree of bools like params: {e}") from None
    if mdef != treedef:
        raise ValueError(f"mask must have the same tree structure as params: got {mdef}, expected {treedef}")
    out = []
    for m in mleaves:
        if isinstance(m, (bool, np.bool_)) or (isinstance(m, (np.ndarray, jax.Array)) and np.shape(m) == () and m.dtype == bool):
            out.append(bool(m))
        else:
            raise ValueError(f"mask leaves must be Python bools (one per parameter array), got {m!r}")
    if not any(out):
        raise ValueError("mask selects no parameters")
    return out


def masked_ravel(params: Any, mask: Any = None) -> tuple[jax.Array, Callable[[jax.Array], Any], Callable[[Any], jax.Array]]:
    """``(flat, unravel, ravel)`` for the leaves of ``params`` selected by ``mask``.

    ``unravel(flat)`` is a full pytree like ``params`` with zeros in the unselected
    leaves; ``ravel(tree)`` extracts the selected entries of any tree like ``params``.
    """
    sel = _check_mask(params, mask)
    leaves, treedef = jax.tree.flatten(params)
    chosen = [x for x, s in zip(leaves, sel) if s]
    flat, unravel_sel = ravel_pytree(chosen)

    def unravel(f):
        parts = iter(unravel_sel(f))
        return jax.tree.unflatten(treedef, [next(parts) if s else jnp.zeros_like(x) for x, s in zip(leaves, sel)])

    def ravel(tree):
        tl = jax.tree.leaves(tree)
        return ravel_pytree([x for x, s in zip(tl, sel) if s])[0]

    return flat, unravel, ravel


def _restricted(fn: Callable[[Any], Any], params: Any, sel: list[bool]) -> tuple[Callable[[list], Any], list]:
    """``fn`` seen as a function of the selected leaves only (others are constants)."""
    leaves, treedef = jax.tree.flatten(params)

    def g(chosen):
        it = iter(chosen)
        return fn(jax.tree.unflatten(treedef, [next(it) if s else x for x, s in zip(leaves, sel)]))

    return g, [x for x, s in zip(leaves, sel) if s]


@dataclasses.dataclass(frozen=True)
class LinearOperator:
    """A symmetric operator on flat vectors of length ``dim`` with pytree views.

    ``matvec(v)`` maps a flat ``(dim,)`` vector to a flat vector; ``unravel`` maps a flat
    vector to a pytree like the params (zeros outside the mask); ``ravel`` the inverse.
    """

    matvec: Callable[[jax.Array], jax.Array]
    dim: int
    dtype: Any
    unravel: Callable[[jax.Array], Any]
    ravel: Callable[[Any], jax.Array]

    def apply(self, v: Any) -> Any:
        """Product with a pytree ``v`` (like params); returns a pytree."""
        return self.unravel(self.matvec(self.ravel(v)))

    def matmat(self, vs: jax.Array, *, batch_size: int | None = None) -> jax.Array:
        """Products with the rows of ``vs`` (shape ``(m, dim)``), returns ``(m, dim)``."""
        if batch_size is None:
            return jax.vmap(self.matvec)(vs)
        return jax.lax.map(self.matvec, vs, batch_size=batch_size)


def _batch_average(per_batch: Callable[[Any, jax.Array], jax.Array], batch: Any, batched: bool):
    if not batched:
        return lambda v: per_batch(batch, v)
    nb = {np.shape(x)[0] for x in jax.tree.leaves(batch)}
    if len(nb) != 1:
        raise ValueError(f"batched=True needs every batch leaf to share its leading axis, got sizes {sorted(nb)}")
    n_batches = nb.pop()

    def mv(v):
        def body(acc, b):
            return acc + per_batch(b, v), None

        total, _ = jax.lax.scan(body, jnp.zeros_like(v), batch)
        return total / n_batches

    return mv


def _first_batch(batch: Any, batched: bool) -> Any:
    return jax.tree.map(lambda x: x[0], batch) if batched else batch


def hessian_operator(
    loss: Callable[[Any, Any], jax.Array], params: Any, batch: Any, *, mask: Any = None, batched: bool = False
) -> LinearOperator:
    r"""The Hessian :math:`\nabla^2_\theta L` of a scalar ``loss(params, batch)`` at ``params``.

    Products are forward-over-reverse HVPs (:func:`hvp`). With ``mask`` the operator is
    the diagonal block of the selected leaves (:math:`H_{SS}`, other parameters fixed);
    with ``batched=True`` it is :math:`\frac1B\sum_b \nabla^2 L(\theta; \text{batch}_b)`.
    """
    sel = _check_mask(params, mask)
    _check_scalar_loss(loss, params, _first_batch(batch, batched))
    flat, unravel, ravel = masked_ravel(params, mask)
    _, unravel_sel = ravel_pytree([x for x, s in zip(jax.tree.leaves(params), sel) if s])

    def per_batch(b, v):
        g, chosen = _restricted(lambda p: loss(p, b), params, sel)
        tangent = unravel_sel(v)
        out = jax.jvp(jax.grad(g), (chosen,), (tangent,))[1]
        return ravel_pytree(out)[0]

    return LinearOperator(_batch_average(per_batch, batch, batched), int(flat.size), flat.dtype, unravel, ravel)


def matrix_operator(a: jax.Array) -> LinearOperator:
    """A dense symmetric ``(n, n)`` matrix as an operator (flat vectors are the pytree)."""
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a must be a square matrix, got shape {a.shape}")
    return LinearOperator(lambda v: a @ v, int(a.shape[0]), a.dtype, lambda v: v, lambda v: v)


# ------------------------------------------------------------------- output-space curvature
_LOSSES = ("cross_entropy", "mse")


def _check_loss_name(loss: str) -> None:
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")


def _labels_as_probs(y: jax.Array, logits: jax.Array) -> jax.Array:
    if y.ndim == logits.ndim:
        return y.astype(logits.dtype)
    return jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)


def cross_entropy_loss(predict: Callable[[Any, Any], jax.Array]) -> Callable[[Any, Any], jax.Array]:
    r"""``loss(params, (x, y)) = mean_n -log softmax(predict(params, x))_{y_n}`` (labels int or one-hot).

    The loss whose Gauss-Newton / Fisher operators ``loss="cross_entropy"`` refers to.
    """

    def loss(params, batch):
        x, y = batch
        logits = predict(params, x)
        return -jnp.mean(jnp.sum(_labels_as_probs(y, logits) * jax.nn.log_softmax(logits), axis=-1))

    return loss


def mse_loss(predict: Callable[[Any, Any], jax.Array]) -> Callable[[Any, Any], jax.Array]:
    r"""``loss(params, (x, y)) = mean_n ½‖predict(params, x)_n − y_n‖²`` (the Gaussian NLL up to a constant).

    The loss whose Gauss-Newton / Fisher operators ``loss="mse"`` refers to.
    """

    def loss(params, batch):
        x, y = batch
        f = predict(params, x)
        return 0.5 * jnp.mean(jnp.sum(jnp.reshape(f - y, (f.shape[0], -1)) ** 2, axis=-1))

    return loss


def _output_operator(
    predict: Callable, params: Any, batch: Any, out_product: Callable, *, mask: Any, batched: bool
) -> LinearOperator:
    """``v -> (1/N) J^T M(f, y) J v`` with the per-example output matrix applied by ``out_product``."""
    sel = _check_mask(params, mask)
    flat, unravel, ravel = masked_ravel(params, mask)
    _, unravel_sel = ravel_pytree([x for x, s in zip(jax.tree.leaves(params), sel) if s])
    b0 = _first_batch(batch, batched)
    if not (isinstance(b0, (tuple, list)) and len(b0) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    out = jax.eval_shape(predict, params, b0[0])
    if len(out.shape) < 1:
        raise ValueError(f"predict must return outputs with a leading example axis, got shape {out.shape}")

    def per_batch(b, v):
        x, y = b
        g, chosen = _restricted(lambda p: predict(p, x), params, sel)
        f, jv = jax.jvp(g, (chosen,), (unravel_sel(v),))
        n = f.shape[0]
        u = out_product(f, y, jv) / n
        _, vjp = jax.vjp(g, chosen)
        return ravel_pytree(vjp(u)[0])[0]

    return LinearOperator(_batch_average(per_batch, batch, batched), int(flat.size), flat.dtype, unravel, ravel)


def _softmax_hessian_product(f, y, u):
    s = jax.nn.softmax(f, axis=-1)
    return s * u - s * jnp.sum(s * u, axis=-1, keepdims=True)


def gauss_newton_operator(
    predict: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    *,
    loss: str = "cross_entropy",
    mask: Any = None,
    batched: bool = False,
) -> LinearOperator:
    r"""Generalised Gauss-Newton :math:`G = \frac1N\sum_n J_n^\top H^{out}_n J_n`.

    ``predict(params, x)`` returns outputs ``(N, C)`` (logits for ``"cross_entropy"``);
    ``batch = (x, y)``. :math:`H^{out} = \mathrm{diag}(s) - s s^\top` (softmax ``s``) for
    ``"cross_entropy"`` (Sagun et al. 2017, Sec. 3), :math:`I` for ``"mse"`` (half squared
    error, see :func:`mse_loss`). ``H = G + \frac1N\sum_n \sum_c (\partial\ell/\partial f_c) \nabla^2 f_c``,
    so ``G == H`` whenever the model is linear in the parameters.
    """
    _check_loss_name(loss)
    if loss == "cross_entropy":
        prod = lambda f, y, u: _softmax_hessian_product(f, y, u)
    else:
        prod = lambda f, y, u: u
    return _output_operator(predict, params, batch, prod, mask=mask, batched=batched)


def fisher_operator(
    predict: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    *,
    kind: str = "empirical",
    loss: str = "cross_entropy",
    mask: Any = None,
    batched: bool = False,
) -> LinearOperator:
    r"""Fisher information products, memory O(#params) (no per-example gradients stored).

    ``kind="empirical"``: :math:`\frac1N\sum_n g_n g_n^\top` with :math:`g_n = J_n^\top r_n`,
    :math:`r_n = \nabla_f \ell(f_n, y_n)` (``s - e_y`` for cross-entropy, ``f - y`` for the
    half squared error) — so :math:`F v = \frac1N\sum_n J_n^\top r_n (r_n^\top J_n v)`.
    ``kind="true"``: :math:`\frac1N\sum_n \mathbb E_{y\sim p_\theta(\cdot|x_n)}[g g^\top]`,
    computed in closed form (it equals the Gauss-Newton matrix for softmax
    cross-entropy and for the unit-variance Gaussian likelihood).
    """
    _check_loss_name(loss)
    if kind not in ("empirical", "true"):
        raise ValueError(f"kind must be 'empirical' or 'true', got {kind!r}")
    if kind == "true":
        return gauss_newton_operator(predict, params, batch, loss=loss, mask=mask, batched=batched)

    def prod(f, y, u):
        if loss == "cross_entropy":
            r = jax.nn.softmax(f, axis=-1) - _labels_as_probs(y, f)
        else:
            r = f - jnp.reshape(y, f.shape)
        axes = tuple(range(1, f.ndim))
        return r * jnp.sum(r * u, axis=axes, keepdims=True)

    return _output_operator(predict, params, batch, prod, mask=mask, batched=batched)


# ----------------------------------------------------------------------------- dense
def dense_matrix(op: LinearOperator, *, batch_size: int = 64) -> jax.Array:
    """The ``(dim, dim)`` matrix of ``op`` (``dim`` products, ``batch_size`` at a time), symmetrised."""
    eye = jnp.eye(op.dim, dtype=op.dtype)
    m = jax.lax.map(op.matvec, eye, batch_size=min(batch_size, op.dim))
    return 0.5 * (m + m.T)


def hessian_matrix(
    loss: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    *,
    mask: Any = None,
    batched: bool = False,
    batch_size: int = 64,
) -> jax.Array:
    """The exact flattened Hessian ``(n, n)`` of ``loss`` at ``params`` (small models only).

    Row/column order is that of ``jax.flatten_util.ravel_pytree`` on the selected
    leaves (:func:`masked_ravel` gives the matching ``unravel``).
    """
    return dense_matrix(hessian_operator(loss, params, batch, mask=mask, batched=batched), batch_size=batch_size)


# ----------------------------------------------------------------------------- Lanczos
class LanczosResult(NamedTuple):
    eigenvalues: jax.Array  # (k,) top: descending; bottom: ascending
    eigenvectors: Any  # pytree like params, each leaf with a leading axis of k
    residuals: jax.Array  # (k,) ||A y - theta y|| = |beta_m * last component of the Ritz vector in T's basis|
    alphas: jax.Array  # (m,) diagonal of the final projected matrix T
    betas: jax.Array  # (m,) betas[j] = T[j+1, j] (0 marks a breakdown or a thick restart), betas[m-1] = beta_m
    converged: jax.Array  # (k,) bool: residual <= rtol * |eigenvalue| (``lanczos``'s rtol)
    num_matvecs: jax.Array | int = 0  # operator products used
    num_restarts: jax.Array | int = 0  # thick restarts performed


def _check_k(k: int, dim: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if k < 1 or k > dim:
        raise ValueError(f"{name} must lie in [1, dim={dim}], got {k}")
    return int(k)


def _orthogonalise(w: jax.Array, q: jax.Array) -> jax.Array:
    """Twice classical Gram-Schmidt of ``w`` against the rows of ``q`` (zero rows are inert)."""
    w = w - q.T @ (q @ w)
    return w - q.T @ (q @ w)


def _breakdown_tol(dtype, tol: float | None) -> float:
    return 100.0 * float(jnp.finfo(dtype).eps) if tol is None else float(tol)


def _lanczos_step(matvec: Callable, V: jax.Array, T: jax.Array, j: jax.Array, anorm: jax.Array, key: jax.Array, tol: float):
    """Lanczos step ``j`` with full reorthogonalisation: fills ``T[j, j]``, ``T[j+1, j] = T[j, j+1]`` and ``V[j+1]``.

    ``V`` is ``(m+1, n)`` (rows past ``j`` are zero, so reorthogonalising against all
    of ``V`` costs the same at every step and the buffer is updated in place). On
    breakdown (``beta <= tol * ||T||``) ``V[j+1]`` is a random unit vector orthogonal to
    ``V`` and the stored coupling is 0.
    """
    n, dtype = V.shape[1], V.dtype
    tiny = jnp.finfo(dtype).tiny
    q = V[j]
    w = matvec(q)
    a = jnp.vdot(q, w)
    w = _orthogonalise(w, V)  # removes a q_j, beta q_{j-1} and the thick-restart arrow too
    b = jnp.linalg.norm(w)
    anorm = jnp.maximum(anorm, jnp.abs(a) + b)
    broke = b <= tol * jnp.maximum(anorm, tiny)

    def fresh(_):
        r = _orthogonalise(jax.random.normal(jax.random.fold_in(key, j), (n,), dtype), V)
        return r / jnp.maximum(jnp.linalg.norm(r), tiny)

    nxt = jax.lax.cond(broke, fresh, lambda _: w / jnp.where(broke, 1.0, b), None)
    b = jnp.where(broke, 0.0, b).astype(dtype)
    T = T.at[j, j].set(a).at[j + 1, j].set(b).at[j, j + 1].set(b)
    return V.at[j + 1].set(nxt), T, anorm


def _lanczos_steps(matvec: Callable, V, T, start, m: int, anorm, key, tol: float):
    """Steps ``start .. m-1`` (a ``fori_loop``; ``start`` may be traced)."""

    def body(j, carry):
        return _lanczos_step(matvec, *carry[:2], j, carry[2], key, tol)

    return jax.lax.fori_loop(start, m, body, (V, T, anorm))


def _init_basis(v0: jax.Array, m: int):
    n, dtype = v0.shape[0], v0.dtype
    V = jnp.zeros((m + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    return V, jnp.zeros((m + 1, m + 1), dtype)


def _lanczos_core(matvec: Callable, v0: jax.Array, m: int, key: jax.Array, tol: float | None):
    """m steps of Lanczos with full reorthogonalisation and restart on breakdown.

    Returns ``(alphas, betas, Q)``: ``Q`` is ``(m, n)`` with orthonormal rows and
    ``Q A Q^T = T`` (tridiagonal; ``betas[j] = 0`` where the iteration restarted).
    ``betas[m-1]`` is the residual norm after the last step.
    """
    V, T = _init_basis(v0, m)
    V, T, _ = _lanczos_steps(matvec, V, T, 0, m, jnp.zeros((), v0.dtype), key, _breakdown_tol(v0.dtype, tol))
    return jnp.diagonal(T)[:m], jnp.diagonal(T, -1), V[:m]


def _tridiag(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    off = betas[:-1]
    return jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)


def _default_basis(k: int, dim: int) -> int:
    return int(min(dim, max(2 * k + 10, 30)))


def _kept(k: int, m: int) -> int:
    """Ritz vectors kept at a thick restart: the ``k`` wanted plus half the rest of the basis."""
    return min(m - 1, k + (m - k) // 2)


def _ritz(T: jax.Array, m: int, count: int, which: str):
    """The ``count`` wanted eigenpairs of ``T[:m, :m]`` (top: descending) and their residual norms."""
    theta, s = jnp.linalg.eigh(T[:m, :m])
    idx = jnp.arange(m - 1, m - 1 - count, -1) if which == "top" else jnp.arange(count)
    vals, ys = theta[idx], s[:, idx]
    return vals, ys, jnp.abs(T[m, m - 1] * ys[m - 1])


def _thick_restart(V: jax.Array, T: jax.Array, m: int, keep: int, which: str):
    """Wu & Simon (2000) restart: ``V[:l]`` = the ``l`` best Ritz vectors, ``V[l]`` = the residual
    direction, ``T`` = diag(theta) with the arrow ``T[l, i] = beta_m s_{m,i}``."""
    vals, ys, _ = _ritz(T, m, keep, which)
    arrow = T[m, m - 1] * ys[m - 1]
    Vn = jnp.zeros_like(V).at[:keep].set(ys.T @ V[:m]).at[keep].set(V[m])
    Tn = jnp.zeros_like(T).at[jnp.arange(keep), jnp.arange(keep)].set(vals)
    Tn = Tn.at[keep, :keep].set(arrow).at[:keep, keep].set(arrow)
    return Vn, Tn


def _thick_restart_lanczos(matvec, v0, key, *, k, m, keep, which, max_restarts, rtol, tol):
    """``(V, T, restarts, matvecs)`` after the cycle whose ``k`` wanted Ritz pairs all met
    ``rtol``, or after ``max_restarts`` restarts. One ``lax.while_loop``."""
    dtype = v0.dtype
    V, T = _init_basis(v0, m)
    btol = _breakdown_tol(dtype, tol)

    def cycle(c):
        V, T, start, restarts, matvecs, anorm, _ = c
        V, T, anorm = _lanczos_steps(matvec, V, T, start, m, anorm, jax.random.fold_in(key, restarts), btol)
        vals, _, resid = _ritz(T, m, k, which)
        stop = jnp.all(resid <= rtol * jnp.abs(vals)) | (restarts >= max_restarts)
        matvecs = matvecs + m - start
        V, T = jax.lax.cond(stop, lambda vt: vt, lambda vt: _thick_restart(*vt, m, keep, which), (V, T))
        return V, T, jnp.int32(keep), restarts + jnp.where(stop, 0, 1), matvecs, anorm, stop

    init = (V, T, jnp.int32(0), jnp.int32(0), jnp.int32(0), jnp.zeros((), dtype), jnp.array(False))
    V, T, _, restarts, matvecs, _, _ = jax.lax.while_loop(lambda c: ~c[-1], cycle, init)
    return V, T, restarts, matvecs


def _check_lanczos_sizes(k: int, dim: int, num_iters, basis_size, max_restarts) -> tuple[int, int]:
    """``(m, max_restarts)`` from the keywords (``num_iters`` is the un-restarted form)."""
    if num_iters is not None:
        if basis_size is not None or max_restarts is not None:
            raise ValueError("num_iters (one un-restarted run) excludes basis_size and max_restarts")
        m = _check_k(num_iters, dim, "num_iters")
        if m < k:
            raise ValueError(f"num_iters must be >= k={k}, got {m}")
        return m, 0
    m = _default_basis(k, dim) if basis_size is None else _check_k(basis_size, dim, "basis_size")
    if m < min(k + 1, dim):
        raise ValueError(f"basis_size must be > k={k} (or equal dim={dim}), got {m}")
    r = 100 if max_restarts is None else max_restarts
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
        raise ValueError(f"max_restarts must be an integer >= 0, got {r!r}")
    return m, (0 if m == dim else int(r))


def _start_vector(key: jax.Array, n: int, dtype) -> jax.Array:
    return jax.random.normal(key, (n,), dtype)


def lanczos(
    op: LinearOperator,
    k: int,
    *,
    key: jax.Array,
    num_iters: int | None = None,
    which: str = "top",
    tol: float | None = None,
    rtol: float = 1e-3,
    basis_size: int | None = None,
    max_restarts: int | None = None,
) -> LanczosResult:
    r"""The ``k`` largest (``which="top"``) or smallest (``"bottom"``) eigenpairs of ``op``.

    Thick-restart Lanczos (Wu & Simon 2000) with full reorthogonalisation (Golub &
    Van Loan 2013, Sec. 10.1), stopping on the Ritz residuals. A basis of
    ``basis_size = m`` vectors (default ``min(dim, max(2k + 10, 30))``) gives
    :math:`A V_m^\top = V_m^\top T_m + \beta_m r e_m^\top`; the Ritz pairs
    :math:`(\theta_i, y_i = V_m^\top s_i)` of :math:`T_m = S \Theta S^\top` have residuals

    .. math:: \|A y_i - \theta_i y_i\| = |\beta_m\, e_m^\top s_i|,

    which bound each eigenvalue's error (and, divided by the gap to the rest of the
    spectrum, its square). The iteration stops when every wanted pair has
    :math:`|\beta_m e_m^\top s_i| \le \mathrm{rtol}\,|\theta_i|` (default ``rtol = 1e-3``).
    Otherwise it restarts: the :math:`l = k + \lfloor (m-k)/2 \rfloor` best Ritz vectors
    and :math:`r` become the new basis, :math:`T` becomes
    :math:`\mathrm{diag}(\theta_{1..l})` bordered by the arrow
    :math:`T_{l+1,i} = \beta_m e_m^\top s_i`, and Lanczos continues from :math:`r`.
    Memory is :math:`(m+1)` vectors and each step reorthogonalises against at most
    :math:`m` of them, whatever the number of restarts (at most ``max_restarts``,
    default 100). With ``m == dim`` one cycle is exact up to rounding. The start vector
    is Gaussian from ``key`` (deterministic). On breakdown (invariant Krylov space,
    :math:`\beta_j \le 100\,\epsilon\,\|T\|` or ``tol``) the iteration continues from a
    random vector orthogonal to the basis with a zero coupling, so nothing becomes NaN.

    ``num_iters=m`` is the former fixed-length call: one Lanczos run of ``m`` steps,
    no restart (same as ``basis_size=m, max_restarts=0``; it excludes both keywords).

    Returns a :class:`LanczosResult` whose ``eigenvectors`` is a pytree like the
    params with a leading axis of ``k`` (zeros outside the operator's mask), with
    ``num_matvecs`` and ``num_restarts``. Jit-compatible (``k``, the sizes and ``which``
    are static). Convergence is reported, never silent: ``converged[i]`` says whether
    ``residuals[i] <= rtol * |eigenvalues[i]|``; called outside ``jit``, a ``UserWarning``
    names the Ritz values that did not converge; under ``jit`` read ``converged``.
    Reference and measurements: docs/papers/hessian-spectrum.md.
    """
    k = _check_k(k, op.dim)
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ValueError(f"rtol must be a number > 0 (relative residual tolerance), got {rtol!r}")
    m, restarts_max = _check_lanczos_sizes(k, op.dim, num_iters, basis_size, max_restarts)
    k0, k1 = jax.random.split(key)
    V, T, restarts, matvecs = _thick_restart_lanczos(
        op.matvec, _start_vector(k0, op.dim, op.dtype), k1, k=k, m=m, keep=_kept(k, m), which=which,
        max_restarts=restarts_max, rtol=rtol, tol=tol)
    vals, ys, resid = _ritz(T, m, k, which)
    vecs = ys.T @ V[:m]  # (k, n)
    vecs = vecs / jnp.linalg.norm(vecs, axis=1, keepdims=True)
    converged = resid <= rtol * jnp.abs(vals)
    _warn_unconverged(vals, resid, converged, rtol, m, restarts, matvecs)
    return LanczosResult(vals, jax.vmap(op.unravel)(vecs), resid, jnp.diagonal(T)[:m], jnp.diagonal(T, -1), converged,
                         matvecs, restarts)


def _warn_unconverged(vals, resid, converged, rtol: float, m: int, restarts, matvecs) -> None:
    """One ``UserWarning`` when called eagerly and some Ritz value missed ``rtol``."""
    if isinstance(converged, jax.core.Tracer):
        return
    bad = np.flatnonzero(~np.asarray(converged))
    if bad.size:
        rel = np.asarray(resid)[bad] / np.maximum(np.abs(np.asarray(vals)[bad]), np.finfo(np.float64).tiny)
        warnings.warn(
            f"lanczos: {bad.size} of {converged.shape[0]} Ritz values not converged to rtol={rtol:g} with a basis of "
            f"{m} after {int(restarts)} restarts ({int(matvecs)} products; indices {bad.tolist()}, largest relative "
            f"residual {rel.max():.2e}); raise max_restarts or basis_size (num_iters: a fixed-length run)",
            stacklevel=3,
        )


def lanczos_tridiag(op: LinearOperator, v0: jax.Array, num_iters: int, *, key: jax.Array | None = None):
    """``(alphas, betas)`` of ``num_iters`` Lanczos steps from flat ``v0`` (for quadrature)."""
    m = _check_k(num_iters, op.dim, "num_iters")
    key = jax.random.PRNGKey(0) if key is None else key
    alphas, betas, _ = _lanczos_core(op.matvec, v0, m, key, None)
    return alphas, betas


# ------------------------------------------------------------------ spectral density (SLQ)
class SpectralDensity(NamedTuple):
    grid: jax.Array  # (G,) eigenvalue grid
    density: jax.Array  # (G,) broadened density, integrates to ~1 over the grid
    nodes: jax.Array  # (P, m) Ritz values per probe
    weights: jax.Array  # (P, m) quadrature weights per probe (each row sums to 1)

    def mass_below(self, threshold: float) -> jax.Array:
        """Estimated fraction of eigenvalues with ``|lambda| < threshold`` (quadrature, unbroadened)."""
        return jnp.mean(jnp.sum(jnp.where(jnp.abs(self.nodes) < threshold, self.weights, 0.0), axis=1))


def gaussian_density(nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma: float) -> jax.Array:
    r""":math:`\frac1P\sum_p\sum_i w_{pi}\, \mathcal N(t; \theta_{pi}, \sigma^2)` on ``grid``."""
    z = (grid[:, None, None] - nodes[None]) / sigma
    g = jnp.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return jnp.mean(jnp.sum(g * weights[None], axis=-1), axis=-1)


def spectral_density(
    op: LinearOperator,
    *,
    key: jax.Array,
    num_probes: int = 8,
    num_iters: int = 80,
    grid_size: int = 1000,
    sigma: float | None = None,
    grid: jax.Array | None = None,
    pad: float = 0.05,
) -> SpectralDensity:
    r"""Spectral density of ``op`` by stochastic Lanczos quadrature.

    For each of ``num_probes`` Rademacher probes ``v`` (normalised), ``num_iters``
    Lanczos steps give :math:`T = Y \Theta Y^\top`; the Gauss quadrature of the
    spectral measure :math:`v^\top \delta(t - A) v` has nodes :math:`\theta_i` and
    weights :math:`\tau_i = Y_{1i}^2` (Lin, Saad & Yang 2016, eq. 3.7). The density is the
    average over probes broadened by a Gaussian of width ``sigma`` (default 1% of the
    spectral range), evaluated on ``grid`` (default ``grid_size`` points spanning the
    extreme Ritz values with ``pad`` margins). Probes run under ``vmap``.
    """
    _check_k(num_probes, 10**12, "num_probes")
    m = _check_k(num_iters, op.dim, "num_iters")
    kp, kr = jax.random.split(key)
    probes = jax.random.rademacher(kp, (num_probes, op.dim), op.dtype) / math.sqrt(op.dim)
    rkeys = jax.random.split(kr, num_probes)

    def one(v, rk):
        a, b, _ = _lanczos_core(op.matvec, v, m, rk, None)
        theta, y = jnp.linalg.eigh(_tridiag(a, b))
        return theta, y[0] ** 2

    nodes, weights = jax.vmap(one)(probes, rkeys)
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    span = jnp.maximum(hi - lo, jnp.finfo(op.dtype).eps * jnp.maximum(jnp.abs(hi), 1.0))
    if grid is None:
        grid = jnp.linspace(lo - pad * span, hi + pad * span, grid_size, dtype=op.dtype)
    s = 0.01 * span if sigma is None else sigma
    return SpectralDensity(grid, gaussian_density(nodes, weights, grid, s), nodes, weights)


# ----------------------------------------------------------------------------- traces
def hutchinson_trace(op: LinearOperator, *, key: jax.Array, num_samples: int = 100, batch_size: int | None = None) -> jax.Array:
    r"""Hutchinson's estimator :math:`\frac1s\sum_i z_i^\top A z_i`, Rademacher ``z`` (unbiased)."""
    s = _check_k(num_samples, 10**12, "num_samples")
    z = jax.random.rademacher(key, (s, op.dim), op.dtype)
    az = op.matmat(z, batch_size=batch_size)
    return jnp.mean(jnp.sum(z * az, axis=1))


def hutchpp_trace(op: LinearOperator, *, key: jax.Array, num_matvecs: int = 99, batch_size: int | None = None) -> jax.Array:
    r"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1), ``num_matvecs`` products.

    With ``s = num_matvecs // 3``: ``S, G`` Rademacher ``(n, s)``; ``Q = qr(A S)``;
    :math:`\mathrm{tr}(Q^\top A Q) + \frac1s \mathrm{tr}(G^\top (I-QQ^\top) A (I-QQ^\top) G)`.
    Unbiased; variance :math:`O(1/s^2)` for matrices with decaying spectra.
    """
    total = _check_k(num_matvecs, 10**12, "num_matvecs")
    if total < 3:
        raise ValueError(f"num_matvecs must be >= 3, got {total}")
    s = total // 3
    ks, kg = jax.random.split(key)
    S = jax.random.rademacher(ks, (s, op.dim), op.dtype)
    G = jax.random.rademacher(kg, (s, op.dim), op.dtype)
    Q, _ = jnp.linalg.qr(op.matmat(S, batch_size=batch_size).T)  # (n, s)
    t1 = jnp.trace(Q.T @ op.matmat(Q.T, batch_size=batch_size).T)
    Gp = G - (G @ Q) @ Q.T
    t2 = jnp.sum(Gp * op.matmat(Gp, batch_size=batch_size)) / s
    return t1 + t2


def diagonal_estimate(op: LinearOperator, *, key: jax.Array, num_samples: int = 100, batch_size: int | None = None) -> Any:
    r"""Unbiased diagonal estimate :math:`\frac1s\sum_i z_i \odot A z_i` (Rademacher; Bekas et al. 2007, eq. 2.1),
    returned as a pytree like the params."""
    s = _check_k(num_samples, 10**12, "num_samples")
    z = jax.random.rademacher(key, (s, op.dim), op.dtype)
    return op.unravel(jnp.mean(z * op.matmat(z, batch_size=batch_size), axis=0))
