"""Local machine unlearning and multi-stage (path-dependent) training.

Yu et al. 2025, "On the Impossibility of Retrain Equivalence in Machine Unlearning":
the objectives GA, NPO and SimNPO over per-example log-probabilities, the staged
training runner (any order of stages, one ``lgrad.train.fit`` per stage), local
unlearning on a forget set, and the RE distance.

Example:
  >>> import jax.numpy as jnp, optax
  >>> from lgrad.unlearn import Stage, train_stages
  >>> X = jnp.eye(2); loss = lambda p, b: jnp.sum((b @ p - 1.0) ** 2)
  >>> stages = [Stage(X[:1], 50, optax.sgd(0.2)), Stage(X[1:], 50, optax.sgd(0.2))]
  >>> r = train_stages(loss, jnp.zeros(2), stages, order=(1, 0))
  >>> [round(float(v), 3) for v in r.params]
  [1.0, 1.0]
"""
from lgrad.unlearn.distance import re_distance as re_distance
from lgrad.unlearn.objectives import class_logprob as class_logprob
from lgrad.unlearn.objectives import gradient_ascent_loss as gradient_ascent_loss
from lgrad.unlearn.objectives import npo_loss as npo_loss
from lgrad.unlearn.objectives import sequence_logprob as sequence_logprob
from lgrad.unlearn.objectives import simnpo_loss as simnpo_loss
from lgrad.unlearn.staged import METHODS as METHODS
from lgrad.unlearn.staged import Stage as Stage
from lgrad.unlearn.staged import StagedResult as StagedResult
from lgrad.unlearn.staged import check_order as check_order
from lgrad.unlearn.staged import train_stages as train_stages
from lgrad.unlearn.staged import unlearn as unlearn
from lgrad.unlearn.staged import unlearning_loss as unlearning_loss

__all__ = [
    "METHODS",
    "Stage",
    "StagedResult",
    "check_order",
    "class_logprob",
    "gradient_ascent_loss",
    "npo_loss",
    "re_distance",
    "sequence_logprob",
    "simnpo_loss",
    "train_stages",
    "unlearn",
    "unlearning_loss",
]
