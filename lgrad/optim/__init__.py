"""Optimizers and gradient transforms, each an ``optax.GradientTransformation``."""
from lgrad.optim.diffgrad import ScaleByDiffGradState as ScaleByDiffGradState
from lgrad.optim.diffgrad import diffgrad as diffgrad
from lgrad.optim.diffgrad import scale_by_diffgrad as scale_by_diffgrad

__all__ = ["ScaleByDiffGradState", "diffgrad", "scale_by_diffgrad"]
