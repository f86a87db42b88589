"""Pure jitted solvers on pytrees (one ``lax.while_loop`` each).

* :func:`gns_newton`: the gradient-normalised smoothness regularised Newton method
  with exact or approximate curvature (``docs/papers/gns-newton.md``).
"""
from lgrad.solvers._gns import GNSResult as GNSResult
from lgrad.solvers._gns import gns_newton as gns_newton

__all__ = ["GNSResult", "gns_newton"]

# Solvers are not optax transforms: nothing for the shared transform table.
TRANSFORMS: tuple[str, ...] = ()
