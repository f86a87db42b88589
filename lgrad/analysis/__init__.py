"""Analysis tools: Hessian spectra, attention-SVM geometry, attribution (gradient family,
local function approximation, NormGrad, patching, level-set traversal; see
``docs/attribution.md``), gradient inversion (``inversion``: inverting gradients, PSNR/SSIM)."""
from lgrad.analysis import attribution as attribution
from lgrad.analysis import _inversion as inversion
from lgrad.analysis import attention_svm as attention_svm
from lgrad.analysis.attention_svm import AttentionProblem as AttentionProblem
from lgrad.analysis.attention_svm import AttSVMInfeasible as AttSVMInfeasible
from lgrad.analysis.attention_svm import AttSVMSolution as AttSVMSolution
from lgrad.analysis.attention_svm import att_svm as att_svm
from lgrad.analysis import hessian as hessian
from lgrad.analysis.hessian import LanczosResult as LanczosResult
from lgrad.analysis.hessian import LinearOperator as LinearOperator
from lgrad.analysis.hessian import SpectralDensity as SpectralDensity
from lgrad.analysis.hessian import dense_matrix as dense_matrix
from lgrad.analysis.hessian import diagonal_estimate as diagonal_estimate
from lgrad.analysis.hessian import fisher_operator as fisher_operator
from lgrad.analysis.hessian import gauss_newton_operator as gauss_newton_operator
from lgrad.analysis.hessian import hessian_matrix as hessian_matrix
from lgrad.analysis.hessian import hessian_operator as hessian_operator
from lgrad.analysis.hessian import hutchinson_trace as hutchinson_trace
from lgrad.analysis.hessian import hutchpp_trace as hutchpp_trace
from lgrad.analysis.hessian import hvp as hvp
from lgrad.analysis.hessian import lanczos as lanczos
from lgrad.analysis.hessian import spectral_density as spectral_density

__all__: list[str] = ["attribution", "inversion"]
__all__ += ["attention_svm", "AttentionProblem", "AttSVMInfeasible", "AttSVMSolution", "att_svm"]
__all__ += [
    "hessian",
    "LanczosResult",
    "LinearOperator",
    "SpectralDensity",
    "dense_matrix",
    "diagonal_estimate",
    "fisher_operator",
    "gauss_newton_operator",
    "hessian_matrix",
    "hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "hvp",
    "lanczos",
    "spectral_density",
]
