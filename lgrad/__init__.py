"""lgrad: learning rules built on local gradients, in JAX.

Subpackages: ``lgrad.optim`` (optax transforms), ``lgrad.engine`` (the experiment
engine: claims, registry, runner, training loop), and more as they land.
"""
__version__ = "0.1.0"
