"""Optimizers and gradient transforms, each an ``optax.GradientTransformation``."""
from lgrad.optim.diffgrad import ScaleByDiffGradState as ScaleByDiffGradState
from lgrad.optim.diffgrad import diffgrad as diffgrad
from lgrad.optim.diffgrad import scale_by_diffgrad as scale_by_diffgrad
from lgrad.optim import dgc as dgc_lib
from lgrad.optim.dgc import DGCState as DGCState
from lgrad.optim.dgc import dgc as dgc
from lgrad.optim.dgc import scale_by_dgc as scale_by_dgc
from lgrad.optim import zeroth_order as zeroth_order
from lgrad.optim.zeroth_order import MeZOState as MeZOState
from lgrad.optim.zeroth_order import mezo as mezo

__all__ = ["ScaleByDiffGradState", "diffgrad", "scale_by_diffgrad"]
__all__ += ["DGCState", "dgc", "dgc_lib", "scale_by_dgc", "MeZOState", "mezo", "zeroth_order"]
