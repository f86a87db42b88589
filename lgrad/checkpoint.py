"""Temporary re-export of :mod:`lgrad.train.checkpoint` (its home since the training
core moved to ``lgrad.train``); import from ``lgrad.train.checkpoint`` instead."""
from lgrad.train.checkpoint import *  # noqa: F401,F403
from lgrad.train.checkpoint import __all__ as __all__  # noqa: F401
