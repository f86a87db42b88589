"""Layer-local learning rules (each block learns from its own local loss)."""

from lgrad.local.blocks import Block as Block
from lgrad.local.blocks import blocks_from_nnx as blocks_from_nnx
from lgrad.local.blocks import chain_shapes as chain_shapes
from lgrad.local.blocks import fresh_copy as fresh_copy
from lgrad.local.learner import LocalLearner as LocalLearner
from lgrad.local.learner import LocalTrainState as LocalTrainState
from lgrad.local.learner import NNXLocalTrainer as NNXLocalTrainer
from lgrad.local.rules import RULES as RULES
from lgrad.local.rules import LocalRule as LocalRule
from lgrad.local.rules import auglocal as auglocal
from lgrad.local.rules import auglocal_depths as auglocal_depths
from lgrad.local.rules import auglocal_indices as auglocal_indices
from lgrad.local.rules import backprop as backprop
from lgrad.local.rules import drtp as drtp
from lgrad.local.rules import ema_update as ema_update
from lgrad.local.rules import feature_reconstruction as feature_reconstruction
from lgrad.local.rules import infopro as infopro
from lgrad.local.rules import make_rule as make_rule
from lgrad.local.rules import man as man
from lgrad.local.rules import tpsgd as tpsgd
from lgrad.local.ridge import ridge_solve as ridge_solve

__all__: list[str] = [
    "Block",
    "blocks_from_nnx",
    "chain_shapes",
    "fresh_copy",
    "LocalLearner",
    "LocalTrainState",
    "NNXLocalTrainer",
    "RULES",
    "LocalRule",
    "auglocal",
    "auglocal_depths",
    "auglocal_indices",
    "backprop",
    "drtp",
    "ema_update",
    "feature_reconstruction",
    "infopro",
    "make_rule",
    "man",
    "tpsgd",
    "ridge_solve",
]
