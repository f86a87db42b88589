"""Byzantine-robust aggregation: aggregators, attacks, MoNNA and MUD-HoG.

* :mod:`lgrad.robust.aggregators` -- ``mean``, ``median``, ``trimmed_mean``,
  ``krum``, ``multi_krum``, ``geometric_median``, ``nnm``, ``nna``,
  ``centered_clipping`` on stacked vectors (n, d) (byzfl semantics; ``docs/papers/monna-robustness.md#robust-aggregators``);
* :mod:`lgrad.robust.tree` -- the same on pytrees and inside the worker axis;
* :mod:`lgrad.robust.attacks` -- sign flip, ALIE, FOE, noise, line search, label
  flips, unreliable data;
* :func:`lgrad.robust.monna` -- MoNNA (on :func:`lgrad.federated.decentralized`);
* :mod:`lgrad.robust.mudhog` -- the MUD-HoG detector (jnp, jittable).
"""
from lgrad.robust import attacks as attacks
from lgrad.robust import mudhog as mudhog
from lgrad.robust.aggregators import centered_clipping as centered_clipping
from lgrad.robust.aggregators import geometric_median as geometric_median
from lgrad.robust.aggregators import krum as krum
from lgrad.robust.aggregators import krum_scores as krum_scores
from lgrad.robust.aggregators import mean as mean
from lgrad.robust.aggregators import median as median
from lgrad.robust.aggregators import multi_krum as multi_krum
from lgrad.robust.aggregators import nna as nna
from lgrad.robust.aggregators import nnm as nnm
from lgrad.robust.aggregators import pairwise_sq_distances as pairwise_sq_distances
from lgrad.robust.aggregators import trimmed_mean as trimmed_mean
from lgrad.robust._monna import aggregator_rule as aggregator_rule
from lgrad.robust._monna import monna as monna
from lgrad.robust._monna import nna_rule as nna_rule
from lgrad.robust.tree import ravel_stacked as ravel_stacked
from lgrad.robust.tree import tree_aggregate as tree_aggregate
from lgrad.robust.tree import worker_aggregate as worker_aggregate

__all__ = [
    "aggregator_rule",
    "attacks",
    "centered_clipping",
    "geometric_median",
    "krum",
    "krum_scores",
    "mean",
    "median",
    "monna",
    "mudhog",
    "multi_krum",
    "nna",
    "nna_rule",
    "nnm",
    "pairwise_sq_distances",
    "ravel_stacked",
    "tree_aggregate",
    "trimmed_mean",
    "worker_aggregate",
]

# Public transformation factories (checked by the shared transform table).
TRANSFORMS = ("monna",)
