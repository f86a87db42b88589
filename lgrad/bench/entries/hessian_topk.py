"""Hessian top-5 by the *default* ``lanczos(op, 5, key=...)`` call: time and accuracy.

* ``hessian-top5-default/eigh/n=<P>``: the default call (``num_iters`` left to its
  default) ÷ the dense route (``P`` HVPs to build the Hessian, then ``eigvalsh``), on
  tanh MLPs small enough for the dense route. ``extra`` records what the time bought:
  the largest relative error of the 5 eigenvalues against ``eigvalsh``, the Ritz
  residuals relative to the eigenvalues, and ``converged`` (``LanczosResult``'s flags at
  the default ``rtol = 1e-3``). A default call that returns unconverged values shows
  here (and warns when called eagerly) instead of passing silently.

Not measured yet: time to top-k within 1e-3 at ~1M parameters
against a converged long run and against PyHessian; the default does not restart, so
convergence there needs a larger ``num_iters`` whose cost grows with its square.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lgrad.analysis import hessian as hs
from lgrad.bench import Entry, time_pair
from lgrad.bench.entries.hessian import _LOSS, _n, _problem


def run(quick: bool) -> list[Entry]:
    key = jax.random.PRNGKey(0)
    out: list[Entry] = []
    for width in ([4, 12] if quick else [24, 96]):
        params, batch = _problem(width, depth=1)
        n = _n(params)
        top5 = jax.jit(lambda p, b: hs.lanczos(hs.hessian_operator(_LOSS, p, b), 5, key=key))
        dense = jax.jit(lambda p, b: jnp.linalg.eigvalsh(hs.hessian_matrix(_LOSS, p, b))[-5:][::-1])
        res = top5(params, batch)
        ref = np.asarray(dense(params, batch))
        vals = np.asarray(res.eigenvalues)
        rel_err = np.abs(vals - ref) / np.maximum(np.abs(ref), 1e-30)
        rel_res = np.asarray(res.residuals) / np.maximum(np.abs(vals), 1e-30)
        t_l, t_d = time_pair(lambda p, b: top5(p, b).eigenvalues, (params, batch), dense, (params, batch),
                             repeats=3 if quick else 5, warmup=1)
        out.append(
            Entry(
                f"hessian-top5-default/eigh/n={n}",
                f"default lanczos(op, 5, key=...) ÷ dense Hessian + eigvalsh, tanh MLP with {n} params, "
                f"256 samples; max relative error {rel_err.max():.1e}, all converged to 1e-3: "
                f"{bool(np.all(np.asarray(res.converged)))}; shared 2-core CPU",
                t_l, t_d, "s",
                extra={"n_params": n, "num_iters": int(res.alphas.shape[0]), "max_rel_error": float(rel_err.max()),
                       "rel_residuals": rel_res.tolist(), "converged": np.asarray(res.converged).tolist()},
            )
        )
    return out
