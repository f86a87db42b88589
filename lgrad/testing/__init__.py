"""Plain-numpy reference implementations used by tests and reproductions."""
from lgrad.testing.numpy_reference import adam_reference as adam_reference
from lgrad.testing.numpy_reference import dgc_reference as dgc_reference
from lgrad.testing.numpy_reference import diffgrad_reference as diffgrad_reference
from lgrad.testing.numpy_reference import mezo_reference as mezo_reference
from lgrad.testing.numpy_reference import sam_reference as sam_reference

__all__ = ["adam_reference", "dgc_reference", "diffgrad_reference", "mezo_reference", "sam_reference"]
