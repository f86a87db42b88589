r"""Attention as a max-margin token selector: the Att-SVM of Tarzanagh et al. (2023).

Reference: D. A. Tarzanagh, Y. Li, C. Thrampoulidis, S. Oymak, "Transformers as
Support Vector Machines", arXiv:2308.16898 (2023). Notation and equation numbers
follow the paper (our account: ``docs/papers/attention-svm.md``).

The model (the paper's Eq. 1 with a fixed linear head and a query ``z`` drawn
independently of the tokens, i.e. cross-attention):

.. math::

    f(X) = v^\top X^\top \mathrm{softmax}(X W z), \qquad
    W = W \ \text{(W-parameterisation)} \quad\text{or}\quad W = K^\top Q
    \ \text{((K, Q)-parameterisation)},

trained on the logistic loss :math:`\mathcal L(W) = \frac1n\sum_i
\log(1 + e^{-y_i f(X_i)})`. With :math:`\alpha_i` the token selected for example
``i``, the attention SVM (the paper's Eq. Att-SVM, and Att-SVM* for the nuclear norm) is

.. math::

    W^{\mathrm{mm}}_\alpha = \arg\min_W \|W\| \quad \text{s.t.} \quad
    (x_{i\alpha_i} - x_{it})^\top W z_i \ge 1 \quad \forall i,\ \forall t \ne \alpha_i,

with the Frobenius norm (GD on ``W`` converges in direction to it, Theorems 2-4)
or the nuclear norm (GD on ``(K, Q)`` with vanishing regularisation, Theorem 5).
The *margin* of a constraint is :math:`(x_{i\alpha_i} - x_{it})^\top W z_i`.

Everything here is dtype-agnostic pure JAX / numpy, except the SVM solvers, which
use ``cvxpy`` (an optional dependency of the experiments extra, imported lazily).

Example:
  >>> import jax
  >>> from lgrad.analysis import attention_svm as asvm
  >>> prob = asvm.make_problem(jax.random.PRNGKey(0), n=6, T=8, d=10)
  >>> params = asvm.init_params(jax.random.PRNGKey(1), 10, "W")
  >>> res = asvm.train_attention(prob, params, steps=200)          # normalised GD
  >>> opt = asvm.select_tokens(asvm.combined_weight(res.params), prob.X, prob.z)
  >>> sol = asvm.att_svm(prob.X, prob.z, opt, norm="fro")          # needs cvxpy
  >>> asvm.correlation(asvm.combined_weight(res.params), sol.W)    # -> close to 1
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_learning_rate, check_nonnegative

__all__ = [
    "AttentionProblem",
    "AttSVMInfeasible",
    "AttSVMSolution",
    "att_svm",
    "attention_logits",
    "attention_output",
    "attention_loss",
    "combined_weight",
    "correlation",
    "globally_optimal_tokens",
    "init_params",
    "is_locally_optimal",
    "make_problem",
    "normalized_gd",
    "svm_margins",
    "select_tokens",
    "token_scores",
    "train_attention",
]

FLOAT64_EPS = float(np.finfo(np.float64).eps)  # 2.22e-16: the authors' eps and lambda


class AttentionProblem(NamedTuple):
    """One data set of the single-layer attention model (possibly batched over seeds).

    ``X`` (n, T, d) tokens, ``y`` (n,) labels in {-1, +1}, ``z`` (n, d) queries,
    ``v`` (d,) the fixed linear head. A leading batch axis on every field is allowed
    (``make_problem`` under ``jax.vmap``).
    """

    X: jax.Array
    y: jax.Array
    z: jax.Array
    v: jax.Array


class AttSVMInfeasible(ValueError):
    """No W satisfies the Att-SVM constraints for the given tokens (nothing to converge to)."""


@dataclasses.dataclass(frozen=True)
class AttSVMSolution:
    """An Att-SVM solution.

    ``W`` (d, d) numpy array, ``norm`` its objective value (Frobenius or nuclear),
    ``margins`` (n, T) with :math:`(x_{i\\alpha_i} - x_{it})^\\top W z_i` (``inf`` at
    ``t = alpha_i``), ``status`` the solver status, ``solver`` its name, ``polished``
    whether the Frobenius solution was refined to machine precision by solving the
    KKT system on its active set.
    """

    W: np.ndarray
    norm: float
    margins: np.ndarray
    status: str
    solver: str
    polished: bool = False

    @property
    def min_margin(self) -> float:
        return float(np.min(self.margins))

    @property
    def support(self) -> np.ndarray:
        """(n, T) booleans: the support tokens (margin within 1e-6 of 1)."""
        return np.abs(self.margins - 1.0) <= 1e-6


# --------------------------------------------------------------------------- validation
def _shape_check(X: Any, z: Any, *, v: Any = None, y: Any = None, opt: Any = None) -> tuple[int, int, int]:
    Xs, zs = np.shape(X), np.shape(z)
    if len(Xs) != 3:
        raise ValueError(f"X must have shape (n, T, d), got shape {Xs}")
    n, T, d = Xs
    if n < 1 or T < 2 or d < 1:
        raise ValueError(f"X must have n >= 1 examples, T >= 2 tokens and d >= 1 features, got shape {Xs}")
    if zs != (n, d):
        raise ValueError(f"z must have shape (n, d) = {(n, d)} to match X {Xs}, got {zs}")
    if v is not None and np.shape(v) != (d,):
        raise ValueError(f"v must have shape (d,) = {(d,)}, got {np.shape(v)}")
    if y is not None and np.shape(y) != (n,):
        raise ValueError(f"y must have shape (n,) = {(n,)}, got {np.shape(y)}")
    if opt is not None:
        if np.shape(opt) != (n,):
            raise ValueError(f"opt must have shape (n,) = {(n,)}, got {np.shape(opt)}")
        o = np.asarray(opt)
        if not np.issubdtype(o.dtype, np.integer):
            raise ValueError(f"opt must hold integer token indices, got dtype {o.dtype}")
        if np.any(o < 0) or np.any(o >= T):
            raise ValueError(f"opt must hold token indices in [0, {T}), got {o.tolist()}")
    return n, T, d


def _check_square(W: Any, d: int, name: str = "W") -> None:
    if np.shape(W)[-2:] != (d, d):
        raise ValueError(f"{name} must have shape (d, d) = {(d, d)}, got {np.shape(W)}")


# --------------------------------------------------------------------------- data and model
def make_problem(key: jax.Array, n: int = 6, T: int = 8, d: int = 10, *, dtype: Any = None) -> AttentionProblem:
    """The authors' "local convergence" data: unit-norm Gaussian tokens and queries,
    a unit-norm Gaussian head ``v`` and labels ``y = sign(N(0, 1))``."""
    for name, val, low in (("n", n, 1), ("T", T, 2), ("d", d, 1)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {val!r}")
    dtype = dtype or jnp.result_type(float)
    kv, ky, kx, kz = jax.random.split(key, 4)
    v = jax.random.normal(kv, (d,), dtype)
    v = v / jnp.linalg.norm(v)
    y = jnp.where(jax.random.normal(ky, (n,), dtype) > 0, 1.0, -1.0).astype(dtype)
    X = jax.random.normal(kx, (n, T, d), dtype)
    X = X / jnp.linalg.norm(X, axis=-1, keepdims=True)
    z = jax.random.normal(kz, (n, d), dtype)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return AttentionProblem(X, y, z, v)


def init_params(key: jax.Array, d: int, parameterization: Literal["W", "KQ", "both"] = "W", *, dtype: Any = None) -> dict:
    """Initial parameters, each entry uniform in [-1/sqrt(d), 1/sqrt(d)] (PyTorch's
    ``nn.Linear`` default, as in the authors' code).

    ``"W"`` -> ``{"W": (d, d)}``, ``"KQ"`` -> ``{"K": (d, d), "Q": (d, d)}``,
    ``"both"`` -> all three (two models trained side by side; the losses are
    separable so their gradients do not mix).
    """
    if parameterization not in ("W", "KQ", "both"):
        raise ValueError(f"parameterization must be 'W', 'KQ' or 'both', got {parameterization!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    dtype = dtype or jnp.result_type(float)
    b = 1.0 / np.sqrt(d)
    kw, kk, kq = jax.random.split(key, 3)
    u = lambda k: jax.random.uniform(k, (d, d), dtype, -b, b)  # noqa: E731
    out = {}
    if parameterization in ("W", "both"):
        out["W"] = u(kw)
    if parameterization in ("KQ", "both"):
        out["K"], out["Q"] = u(kk), u(kq)
    return out


def combined_weight(params: Mapping[str, Any], which: Literal["auto", "W", "KQ"] = "auto") -> jax.Array:
    """The attention matrix: ``params["W"]`` or ``K^T Q`` (``which="auto"``: W if present)."""
    if which not in ("auto", "W", "KQ"):
        raise ValueError(f"which must be 'auto', 'W' or 'KQ', got {which!r}")
    if which == "W" or (which == "auto" and "W" in params):
        if "W" not in params:
            raise ValueError("params has no 'W' entry")
        return params["W"]
    if "K" not in params or "Q" not in params:
        raise ValueError(f"params must hold 'W' or both 'K' and 'Q', got keys {sorted(params)}")
    return jnp.swapaxes(params["K"], -1, -2) @ params["Q"]


def attention_logits(W: jax.Array, X: jax.Array, z: jax.Array) -> jax.Array:
    """(n, T) logits :math:`X_i W z_i`."""
    n, T, d = _shape_check(X, z)
    _check_square(W, d)
    return jnp.einsum("ntd,de,ne->nt", X, W, z)


def attention_output(W: jax.Array, X: jax.Array, z: jax.Array, v: jax.Array) -> jax.Array:
    """(n,) outputs :math:`f(X_i) = v^\\top X_i^\\top \\mathrm{softmax}(X_i W z_i)`."""
    _shape_check(X, z, v=v)
    s = jax.nn.softmax(attention_logits(W, X, z), axis=-1)
    return jnp.einsum("nt,ntd,d->n", s, X, v)


def attention_loss(W: jax.Array, problem: AttentionProblem) -> jax.Array:
    """Mean logistic loss :math:`\\frac1n\\sum_i \\log(1 + e^{-y_i f(X_i)})`."""
    X, y, z, v = problem
    _shape_check(X, z, v=v, y=y)
    return jnp.mean(jax.nn.softplus(-y * attention_output(W, X, z, v)))


def token_scores(problem: AttentionProblem) -> jax.Array:
    """(n, T) token scores :math:`\\gamma_{it} = y_i v^\\top x_{it}` (the paper's Def. 1)."""
    X, y, z, v = problem
    _shape_check(X, z, v=v, y=y)
    return y[:, None] * (X @ v)


def globally_optimal_tokens(problem: AttentionProblem) -> jax.Array:
    """(n,) the globally optimal tokens :math:`\\arg\\max_t \\gamma_{it}` (Def. 1)."""
    return jnp.argmax(token_scores(problem), axis=-1)


def select_tokens(W: jax.Array, X: jax.Array, z: jax.Array) -> jax.Array:
    """(n,) the token with the largest softmax weight under ``W`` (the trained model's choice)."""
    return jnp.argmax(attention_logits(W, X, z), axis=-1)


def correlation(A: jax.Array, B: jax.Array) -> jax.Array:
    """:math:`\\langle A, B\\rangle / (\\|A\\|_F \\|B\\|_F)` over the last two axes (batched)."""
    if np.shape(A)[-2:] != np.shape(B)[-2:]:
        raise ValueError(f"A and B must have the same matrix shape, got {np.shape(A)} and {np.shape(B)}")
    num = jnp.sum(A * B, axis=(-2, -1))
    return num / (jnp.linalg.norm(A, axis=(-2, -1)) * jnp.linalg.norm(B, axis=(-2, -1)))


# --------------------------------------------------------------------------- the SVM
def _constraint_matrix(X: np.ndarray, z: np.ndarray, opt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``vec((x_{i,opt} - x_{it}) z_i^T)`` (C order) for every t != opt_i, and the (i, t) pairs."""
    n, T, d = X.shape
    rows, idx = [], []
    for i in range(n):
        for t in range(T):
            if t != opt[i]:
                rows.append(np.outer(X[i, opt[i]] - X[i, t], z[i]).ravel())
                idx.append((i, t))
    return np.asarray(rows), np.asarray(idx)


def svm_margins(W: Any, X: Any, z: Any, opt: Any) -> np.ndarray:
    """(n, T) margins :math:`(x_{i\\alpha_i} - x_{it})^\\top W z_i`, ``inf`` at ``t = alpha_i``."""
    n, T, d = _shape_check(X, z, opt=opt)
    _check_square(W, d)
    X, z, W, opt = np.asarray(X, np.float64), np.asarray(z, np.float64), np.asarray(W, np.float64), np.asarray(opt)
    logits = np.einsum("ntd,de,ne->nt", X, W, z)
    m = logits[np.arange(n), opt][:, None] - logits
    m[np.arange(n), opt] = np.inf
    return m


def att_svm(
    X: Any,
    z: Any,
    opt: Any,
    *,
    norm: Literal["fro", "nuc"] = "fro",
    solver: str | None = None,
    polish: bool = True,
) -> AttSVMSolution:
    r"""Solve the Att-SVM for the selected tokens ``opt`` (the paper's Eq. Att-SVM /
    Att-SVM*):

    .. math::

        \min_W \|W\| \quad \text{s.t.} \quad (x_{i,\mathrm{opt}_i} - x_{it})^\top W z_i \ge 1
        \quad \forall i,\ t \ne \mathrm{opt}_i.

    Args:
      X: (n, T, d) tokens; z: (n, d) queries; opt: (n,) integer token indices.
      norm: ``"fro"`` (Frobenius; a QP, minimising :math:`\|W\|_F^2`) or ``"nuc"``
        (nuclear; an SDP-representable cone program).
      solver: a cvxpy solver name (default: Clarabel, falling back to SCS).
      polish: for ``"fro"``, refine the interior-point solution by solving the KKT
        system on its active set exactly (kept only if the result is primal and dual
        feasible), which makes it exact to machine precision.

    After solving, ``W`` is rescaled so that its smallest margin is exactly >= 1
    (a relative change of the solver's tolerance, ~1e-9), so the constraints hold.

    Raises:
      AttSVMInfeasible: no ``W`` separates the selected tokens (e.g. a non-selected
        token equal to the selected one, or too many constraints for ``d``).
      ValueError: bad shapes, indices or ``norm``.
      ImportError: cvxpy is not installed (``pip install lgrad[experiments]``).
    """
    if norm not in ("fro", "nuc"):
        raise ValueError(f"norm must be 'fro' or 'nuc', got {norm!r}")
    n, T, d = _shape_check(X, z, opt=opt)
    X, z, opt = np.asarray(X, np.float64), np.asarray(z, np.float64), np.asarray(opt)
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(z))):
        raise ValueError("X and z must be finite")
    A, _ = _constraint_matrix(X, z, opt)
    if np.any(np.max(np.abs(A), axis=1) == 0.0):
        raise AttSVMInfeasible(
            "Att-SVM is infeasible: a constraint row is zero (a non-selected token equals the selected one, "
            "or z_i = 0), so (x_opt - x_t)^T W z_i >= 1 cannot hold for any W"
        )
    try:
        import cvxpy as cp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "att_svm needs cvxpy (an optional dependency): pip install 'lgrad[experiments]' or pip install cvxpy"
        ) from e
    # Scale rows to unit norm: the constraint a^T w >= 1 becomes (a/|a|)^T w >= 1/|a|
    # (same feasible set, better conditioned for the solver).
    scale = np.linalg.norm(A, axis=1)
    An, bn = A / scale[:, None], 1.0 / scale
    problem, W, A_par, b_par = _cvx_problem(An.shape[0], d, norm)
    A_par.value, b_par.value = An, bn
    installed = cp.installed_solvers()
    candidates = [solver] if solver else [s for s in ("CLARABEL", "SCS") if s in installed]
    if not candidates:
        raise ImportError(f"no conic solver for the Att-SVM; install Clarabel or SCS (cvxpy has {installed})")
    status, used, err = None, None, None
    for name in candidates:
        try:
            kwargs = {"eps": 1e-9, "max_iters": 200_000} if name == "SCS" else {}
            problem.solve(solver=name, **kwargs)
            status, used = problem.status, name
        except cp.error.SolverError as e:  # try the next solver
            err = e
            continue
        if status in (cp.OPTIMAL, cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            break
    if status is None:
        raise RuntimeError(f"every solver failed on the Att-SVM ({candidates}): {err}")
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise AttSVMInfeasible(
            f"Att-SVM ({norm}) is infeasible for the selected tokens (solver {used}: {status}): no W gives every "
            f"selected token a margin >= 1 over the other {T - 1} tokens of its example ({A.shape[0]} constraints, "
            f"{d * d} unknowns)"
        )
    if W.value is None or status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(f"Att-SVM solver {used} ended with status {status!r}")
    Wv = np.asarray(W.value, np.float64)
    polished = False
    if norm == "fro" and polish:
        Wp = _polish_fro(A, Wv.ravel())
        if Wp is not None:
            Wv, polished = Wp.reshape(d, d), True
    margins = svm_margins(Wv, X, z, opt)
    mmin = float(np.min(margins))
    if not np.isfinite(mmin) or mmin <= 0:
        raise RuntimeError(f"Att-SVM solver {used} returned a W with min margin {mmin} (status {status})")
    if mmin < 1.0:
        Wv = Wv / mmin
        margins = margins / mmin
    value = float(np.linalg.norm(Wv) if norm == "fro" else np.sum(np.linalg.svd(Wv, compute_uv=False)))
    return AttSVMSolution(Wv, value, margins, str(status), used, polished)


@functools.lru_cache(maxsize=32)
def _cvx_problem(m: int, d: int, norm: str):
    """A parameterised (DPP) cvxpy problem per (constraints, d, norm): solving another
    data set of the same size skips cvxpy's canonicalisation (about 10x faster)."""
    import cvxpy as cp

    W = cp.Variable((d, d))
    A_par, b_par = cp.Parameter((m, d * d)), cp.Parameter(m)
    objective = cp.sum_squares(W) if norm == "fro" else cp.normNuc(W)
    problem = cp.Problem(cp.Minimize(objective), [A_par @ cp.vec(W, order="C") >= b_par])
    return problem, W, A_par, b_par


def _polish_fro(A: np.ndarray, w: np.ndarray, active_tol: float = 1e-5) -> np.ndarray | None:
    """Exact Frobenius Att-SVM from an approximate solution: on the active set S,
    w = A_S^T mu with A_S A_S^T mu = 1 (KKT with multipliers mu >= 0). Returns None
    unless the result is primal feasible and dual feasible."""
    margins = A @ w
    S = margins <= 1.0 + active_tol
    if not np.any(S):
        return None
    AS = A[S]
    mu, *_ = np.linalg.lstsq(AS @ AS.T, np.ones(AS.shape[0]), rcond=None)
    wp = AS.T @ mu
    if np.any(mu < -1e-9 * max(1.0, np.max(np.abs(mu)))):
        return None
    mp = A @ wp
    if np.min(mp) < 1.0 - 1e-9 or np.max(np.abs(mp[S] - 1.0)) > 1e-9:
        return None
    return wp


def is_locally_optimal(problem: AttentionProblem, opt: Any, solution: AttSVMSolution, *, tol: float = 1e-6) -> np.ndarray:
    """(n,) booleans: the paper's Definition 2 (locally optimal tokens) per example.

    The selected token of example ``i`` is locally optimal when its score beats the
    score of every *support* token (margin within ``tol`` of 1 under the Att-SVM
    solution): :math:`\\gamma_{i\\alpha_i} > \\gamma_{it}` for all
    :math:`t \\in \\mathcal T_i`. ``all()`` of the result is the paper's condition.
    """
    X, y, z, v = problem
    n, T, d = _shape_check(X, z, v=v, y=y, opt=opt)
    gamma = np.asarray(token_scores(problem), np.float64)
    opt = np.asarray(opt)
    support = np.abs(solution.margins - 1.0) <= tol
    best = gamma[np.arange(n), opt][:, None]
    return np.all(~support | (best > gamma), axis=1)


# --------------------------------------------------------------------------- training
def normalized_gd(
    learning_rate: float, *, per_leaf: bool = True, eps: float = FLOAT64_EPS
) -> optax.GradientTransformation:
    r"""Normalised gradient descent, :math:`W \leftarrow W - \eta\, g / (\|g\|_F + \epsilon)`.

    This is ``optax.normalize_by_update_norm(scale_factor=-learning_rate, eps=eps)``
    (optax >= 0.2.3 has it; no new transform is needed). With ``per_leaf=True`` each
    parameter array is normalised by its own norm, as the authors do for ``K`` and
    ``Q`` separately; with a single ``W`` the two coincide. ``eps`` defaults to the
    float64 machine epsilon, the authors' value.
    """
    check_learning_rate(learning_rate)
    check_nonnegative(eps, "eps")
    if callable(learning_rate):
        raise ValueError("learning_rate must be a number for normalized_gd (schedules are not supported)")
    tx = optax.normalize_by_update_norm(scale_factor=-learning_rate, eps=eps)
    if not per_leaf:
        return tx

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: tx.update(g, state)[0], updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _model_loss(params: Mapping[str, Any], problem: AttentionProblem, reg: float) -> tuple[jax.Array, dict]:
    """Sum of the W-model loss and the (K, Q)-model loss (+ reg (|K|^2 + |Q|^2)); the
    two share no parameter, so each gets exactly its own gradient."""
    total, aux = 0.0, {}
    if "W" in params:
        lw = attention_loss(params["W"], problem)
        aux["loss_W"] = lw
        aux["maxprob_W"] = jnp.mean(jnp.max(jax.nn.softmax(attention_logits(params["W"], problem.X, problem.z)), -1))
        total = total + lw
    if "K" in params:
        Wkq = combined_weight(params, "KQ")
        lkq = attention_loss(Wkq, problem)
        aux["loss_KQ"] = lkq
        aux["maxprob_KQ"] = jnp.mean(jnp.max(jax.nn.softmax(attention_logits(Wkq, problem.X, problem.z)), -1))
        total = total + lkq + reg * (jnp.sum(params["K"] ** 2) + jnp.sum(params["Q"] ** 2))
    return total, aux


def train_attention(
    problem: AttentionProblem,
    params: Mapping[str, Any],
    *,
    steps: int,
    learning_rate: float = 0.1,
    reg: float = FLOAT64_EPS,
    eps: float = FLOAT64_EPS,
    eval_every: int = 0,
    progress: Callable[..., Any] | None = None,
):
    """Normalised GD on the attention model(s) in ``params`` (``"W"``, ``"K"``/``"Q"``
    or all three), via ``lgrad.train.run_loop`` (one jitted ``lax.scan``).

    If ``problem.X`` has 4 axes, everything is batched over a leading seed axis
    (``params`` too): the per-seed step is ``jax.vmap``-ed inside the one compiled
    step, so each seed is normalised by its own gradient norm.

    ``reg`` is the (K, Q) regulariser :math:`\\lambda(\\|K\\|^2 + \\|Q\\|^2)` (the authors'
    :math:`\\lambda` = 2.22e-16; without it the (K, Q) correlation decays late).
    History: per step ``loss_*`` and ``maxprob_*`` (mean largest softmax weight), per
    seed. Evals (every ``eval_every``): ``W`` and/or ``KQ``, the attention matrices.
    Returns the engine's ``FitResult`` (``.params`` are the final parameters).
    """
    from lgrad.train import TrainState, run_loop

    check_nonnegative(reg, "reg")
    batched = np.ndim(problem.X) == 4
    if not batched and np.ndim(problem.X) != 3:
        raise ValueError(f"problem.X must have shape (n, T, d) or (seeds, n, T, d), got {np.shape(problem.X)}")
    d = np.shape(problem.X)[-1]
    for k, p in params.items():
        if k not in ("W", "K", "Q"):
            raise ValueError(f"params keys must be among 'W', 'K', 'Q', got {k!r}")
        want = ((np.shape(problem.X)[0],) if batched else ()) + (d, d)
        if np.shape(p) != want:
            raise ValueError(f"params[{k!r}] must have shape {want}, got {np.shape(p)}")
    if ("K" in params) != ("Q" in params):
        raise ValueError("params must hold both 'K' and 'Q' or neither")
    tx = normalized_gd(learning_rate, per_leaf=True, eps=eps)
    grad_fn = jax.value_and_grad(_model_loss, has_aux=True)

    def one_step(p, s, prob):
        (_, aux), g = grad_fn(p, prob, reg)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, aux

    def one_eval(p):
        out = {}
        if "W" in p:
            out["W"] = p["W"]
        if "K" in p:
            out["KQ"] = combined_weight(p, "KQ")
        return out

    step1 = jax.vmap(one_step) if batched else one_step
    eval1 = jax.vmap(one_eval) if batched else one_eval

    def step_fn(state):
        p, s, aux = step1(state.params, state.opt_state, problem)
        return TrainState(p, s, state.key, state.step + 1), aux

    params = dict(params)
    state = TrainState(params, tx.init(params), jax.random.PRNGKey(0), jnp.zeros([], jnp.int32))
    return run_loop(
        step_fn,
        state,
        steps=steps,
        eval_fn=lambda st: eval1(st.params),
        eval_every=eval_every,
        progress=progress,
    )
