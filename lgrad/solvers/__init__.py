"""Pure jitted solvers on pytrees (one ``lax.while_loop`` each).

* :func:`gns_newton`: the gradient-normalised smoothness regularised Newton method
  with exact or approximate curvature (``docs/papers/gns-newton.md``);
* :func:`sketch_auglag`: equality-constrained Newton-KKT steps solved by randomized
  sketching, globalised by the exact augmented Lagrangian (``docs/papers/sketch-auglag.md``).
"""
from lgrad.solvers._auglag import AugLagResult as AugLagResult
from lgrad.solvers._auglag import sketch_auglag as sketch_auglag
from lgrad.solvers._gns import GNSResult as GNSResult
from lgrad.solvers._gns import gns_newton as gns_newton

__all__ = ["AugLagResult", "GNSResult", "gns_newton", "sketch_auglag"]

# Solvers are not optax transforms: nothing for the shared transform table.
TRANSFORMS: tuple[str, ...] = ()
