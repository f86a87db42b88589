"""Plain-numpy reference implementations used by the tests and the reproductions."""
from lgrad.testing.numpy_reference import adam_reference as adam_reference
from lgrad.testing.numpy_reference import diffgrad_reference as diffgrad_reference

__all__ = ["adam_reference", "diffgrad_reference"]
