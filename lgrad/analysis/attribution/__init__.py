"""Attribution and input-space geometry on ``apply(params, x)`` (docs/attribution.md).

* gradient family and occlusion with captum's conventions: :func:`saliency`,
  :func:`gradient`, :func:`input_x_gradient`, :func:`smoothgrad` / :func:`noise_tunnel`,
  :func:`integrated_gradients`, :func:`guided_backprop`, :func:`deeplift`,
  :func:`occlusion`, :func:`grad_cam`;
* named layers (:func:`tap`, :func:`layer_gradient`) and nonlinearities with
  selectable derivative rules (:func:`rules`, :func:`relu`, :func:`gelu`, ...);
* local function approximation (:func:`explain`, :func:`lfa_loss`, ...);
* NormGrad (:func:`normgrad`, :func:`meta_saliency`);
* activation / attribution / RelP patching;
* level-set traversal (:func:`level_set_traversal`).
"""
from lgrad.analysis.attribution._core import RULES as RULES
from lgrad.analysis.attribution._core import gated as gated
from lgrad.analysis.attribution._core import gelu as gelu
from lgrad.analysis.attribution._core import layer_forward as layer_forward
from lgrad.analysis.attribution._core import layer_gradient as layer_gradient
from lgrad.analysis.attribution._core import layer_norm as layer_norm
from lgrad.analysis.attribution._core import layer_shape as layer_shape
from lgrad.analysis.attribution._core import relu as relu
from lgrad.analysis.attribution._core import replace_layer as replace_layer
from lgrad.analysis.attribution._core import rules as rules
from lgrad.analysis.attribution._core import select_target as select_target
from lgrad.analysis.attribution._core import silu as silu
from lgrad.analysis.attribution._core import softmax_pattern as softmax_pattern
from lgrad.analysis.attribution._core import tap as tap
from lgrad.analysis.attribution._core import target_function as target_function
from lgrad.analysis.attribution._gradient import IG_METHODS as IG_METHODS
from lgrad.analysis.attribution._gradient import deeplift as deeplift
from lgrad.analysis.attribution._gradient import grad_cam as grad_cam
from lgrad.analysis.attribution._gradient import gradient as gradient
from lgrad.analysis.attribution._gradient import guided_backprop as guided_backprop
from lgrad.analysis.attribution._gradient import input_x_gradient as input_x_gradient
from lgrad.analysis.attribution._gradient import integrated_gradients as integrated_gradients
from lgrad.analysis.attribution._gradient import integration_points as integration_points
from lgrad.analysis.attribution._gradient import noise_tunnel as noise_tunnel
from lgrad.analysis.attribution._gradient import occlusion as occlusion
from lgrad.analysis.attribution._gradient import saliency as saliency
from lgrad.analysis.attribution._gradient import smoothgrad as smoothgrad
from lgrad.analysis.attribution._levelset import LevelSetResult as LevelSetResult
from lgrad.analysis.attribution._levelset import level_set_traversal as level_set_traversal
from lgrad.analysis.attribution._levelset import orthogonal_step as orthogonal_step
from lgrad.analysis.attribution._lfa import LFA_METHODS as LFA_METHODS
from lgrad.analysis.attribution._lfa import LinearSurrogate as LinearSurrogate
from lgrad.analysis.attribution._lfa import Neighbourhood as Neighbourhood
from lgrad.analysis.attribution._lfa import explain as explain
from lgrad.analysis.attribution._lfa import fit_surrogate as fit_surrogate
from lgrad.analysis.attribution._lfa import lfa_attribution as lfa_attribution
from lgrad.analysis.attribution._lfa import lfa_loss as lfa_loss
from lgrad.analysis.attribution._lfa import neighbourhood as neighbourhood
from lgrad.analysis.attribution._normgrad import NORMGRAD_VARIANTS as NORMGRAD_VARIANTS
from lgrad.analysis.attribution._normgrad import meta_saliency as meta_saliency
from lgrad.analysis.attribution._normgrad import normgrad as normgrad
from lgrad.analysis.attribution._normgrad import normgrad_from as normgrad_from
from lgrad.analysis.attribution._patching import activation_patching as activation_patching
from lgrad.analysis.attribution._patching import attribution_patching as attribution_patching
from lgrad.analysis.attribution._patching import relp_patching as relp_patching

__all__ = [
    "RULES", "gated", "gelu", "layer_forward", "layer_gradient", "layer_norm", "layer_shape", "relu",
    "replace_layer", "rules", "select_target", "silu", "softmax_pattern", "tap", "target_function",
    "IG_METHODS", "deeplift", "grad_cam", "gradient", "guided_backprop", "input_x_gradient",
    "integrated_gradients", "integration_points", "noise_tunnel", "occlusion", "saliency", "smoothgrad",
    "LevelSetResult", "level_set_traversal", "orthogonal_step",
    "LFA_METHODS", "LinearSurrogate", "Neighbourhood", "explain", "fit_surrogate", "lfa_attribution",
    "lfa_loss", "neighbourhood",
    "NORMGRAD_VARIANTS", "meta_saliency", "normgrad", "normgrad_from",
    "activation_patching", "attribution_patching", "relp_patching",
]
