"""Plain-numpy reference implementations used by tests and reproductions."""
from lgrad.testing.numpy_reference import adam_reference as adam_reference
from lgrad.testing.numpy_reference import dgc_reference as dgc_reference
from lgrad.testing.numpy_reference import diffgrad_reference as diffgrad_reference
from lgrad.testing.numpy_reference import gd_reference as gd_reference
from lgrad.testing.numpy_reference import mezo_reference as mezo_reference
from lgrad.testing.numpy_reference import momentum_reference as momentum_reference
from lgrad.testing.numpy_reference import sam_reference as sam_reference

__all__ = ["adam_reference", "dgc_reference", "diffgrad_reference", "gd_reference", "mezo_reference", "momentum_reference", "sam_reference"]
