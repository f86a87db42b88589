"""Optimizers and gradient transforms, each an ``optax.GradientTransformation``.

The rules live in private modules (``_diffgrad``, ``_dgc``, ``_dpsgd``, ``_sam``, ``_zeroth_order``);
this package re-exports every public name, optax-style. :data:`TRANSFORMS` names
every public transform factory (the shared transform table covers each)."""
from lgrad.optim._dgc import DGCState as DGCState
from lgrad.optim._dgc import LocalStep as LocalStep
from lgrad.optim._dgc import SparseMessage as SparseMessage
from lgrad.optim._dgc import accumulate as accumulate
from lgrad.optim._dgc import bookkeeping_error as bookkeeping_error
from lgrad.optim._dgc import clip_local_gradient as clip_local_gradient
from lgrad.optim._dgc import dgc as dgc
from lgrad.optim._dgc import exchange as exchange
from lgrad.optim._dgc import leaf_budget as leaf_budget
from lgrad.optim._dgc import local_step as local_step
from lgrad.optim._dgc import scale_by_dgc as scale_by_dgc
from lgrad.optim._dgc import select_topk as select_topk
from lgrad.optim._dgc import warmup_density as warmup_density
from lgrad.optim._dgc import warmup_phases as warmup_phases
from lgrad.optim._dpsgd import DPSGDState as DPSGDState
from lgrad.optim._dpsgd import clip_per_example as clip_per_example
from lgrad.optim._dpsgd import dpsgd as dpsgd
from lgrad.optim._dpsgd import scale_by_dpsgd as scale_by_dpsgd
from lgrad.optim._diffgrad import ScaleByDiffGradState as ScaleByDiffGradState
from lgrad.optim._diffgrad import diffgrad as diffgrad
from lgrad.optim._diffgrad import scale_by_diffgrad as scale_by_diffgrad
from lgrad.optim._sam import ScaleBySAMState as ScaleBySAMState
from lgrad.optim._sam import perturbed_gradient as perturbed_gradient
from lgrad.optim._sam import sam as sam
from lgrad.optim._sam import scale_by_sam as scale_by_sam
from lgrad.optim._zeroth_order import INVALID_CODE as INVALID_CODE
from lgrad.optim._zeroth_order import MeZOState as MeZOState
from lgrad.optim._zeroth_order import mezo as mezo
from lgrad.optim._zeroth_order import one_byte_decode as one_byte_decode
from lgrad.optim._zeroth_order import one_byte_encode as one_byte_encode
from lgrad.optim._zeroth_order import perturb as perturb
from lgrad.optim._zeroth_order import scale_by_mezo as scale_by_mezo
from lgrad.optim._zeroth_order import sample_key as sample_key
from lgrad.optim._zeroth_order import spsa_gradient as spsa_gradient
from lgrad.optim._zeroth_order import spsa_projected_gradient as spsa_projected_gradient

#: Every public transform factory of this package (returns an optax transform).
TRANSFORMS = (
    "diffgrad", "scale_by_diffgrad", "dgc", "scale_by_dgc", "mezo", "scale_by_mezo", "sam", "scale_by_sam",
    "dpsgd", "scale_by_dpsgd",
)

__all__ = [
    # diffGrad
    "ScaleByDiffGradState",
    "diffgrad",
    "scale_by_diffgrad",
    # Deep Gradient Compression
    "DGCState",
    "LocalStep",
    "SparseMessage",
    "accumulate",
    "bookkeeping_error",
    "clip_local_gradient",
    "dgc",
    "exchange",
    "leaf_budget",
    "local_step",
    "scale_by_dgc",
    "select_topk",
    "warmup_density",
    "warmup_phases",
    # DP-SGD (per-example clipping + Gaussian noise; FFA-LoRA)
    "DPSGDState",
    "clip_per_example",
    "dpsgd",
    "scale_by_dpsgd",
    # SAM-style perturbed gradient (FedSpeed's local step)
    "ScaleBySAMState",
    "perturbed_gradient",
    "sam",
    "scale_by_sam",
    # zeroth order (MeZO, one byte)
    "INVALID_CODE",
    "MeZOState",
    "mezo",
    "one_byte_decode",
    "one_byte_encode",
    "perturb",
    "scale_by_mezo",
    "sample_key",
    "spsa_gradient",
    "spsa_projected_gradient",
]
