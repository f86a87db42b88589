"""Federated and decentralized algorithms on the worker axis.

One layer for every multi-worker algorithm (see ``docs/federated.md``):

* data: :class:`ClientData`, :func:`stack_clients`, :func:`stack_runs`, :func:`client_minibatch`,
  :func:`sample_clients`;
* algorithms, each a :class:`FederatedAlgorithm` ``(init, round)``:
  :func:`worker_algorithm` (every worker steps with an optax rule whose collectives
  communicate: data-parallel SGD, DGC, MeZO, decentralized rules) and
  :func:`server_algorithm` (clients with :func:`local_training` or any
  :class:`ClientUpdate`, sampling, an :class:`Aggregator`, a server optimizer);
* decentralized rules: :func:`decentralized` with a mix -- :func:`gossip_mix`
  (D-SGD over any graph) or :func:`neighbour_mix` (robust rules, MoNNA's NNA);
* DADAO (Even et al.), an asynchronous decentralized event simulator:
  :func:`dadao_simulate` with :func:`dadao_graph`, :func:`dadao_constants`,
  :func:`dadao_events`, and its synchronous baseline :func:`dsgd_baseline`;
* FedSpeed (Sun et al. 2023): :func:`fedspeed`, :func:`fedspeed_client`,
  :func:`fedspeed_aggregator`; curricula: :func:`order_by_difficulty`,
  :func:`linear_pacing`, :func:`curriculum_training`, :func:`difficulty_selection`;
* HyperFL (Guo et al. 2025): :func:`hyperfl`, :func:`hyperfl_client`; FZooS (Shu
  et al. 2023) and the FedZO baseline: :func:`fzoos`, :func:`fzoos_client`,
  :func:`fedzo_client`;
* :func:`mean_over_workers`: the all-reduce of synchronous data-parallel training;
* :func:`shard_workers` places worker-stacked inputs on a device mesh.
"""
from lgrad.federated._algorithm import Aggregator as Aggregator
from lgrad.federated._algorithm import ClientUpdate as ClientUpdate
from lgrad.federated._algorithm import FederatedAlgorithm as FederatedAlgorithm
from lgrad.federated._algorithm import ServerState as ServerState
from lgrad.federated._algorithm import WorkerState as WorkerState
from lgrad.federated._algorithm import local_training as local_training
from lgrad.federated._algorithm import mean_aggregator as mean_aggregator
from lgrad.federated._algorithm import rule_aggregator as rule_aggregator
from lgrad.federated._algorithm import server_algorithm as server_algorithm
from lgrad.federated._algorithm import shard_workers as shard_workers
from lgrad.federated._algorithm import worker_algorithm as worker_algorithm
from lgrad.federated._fzoos import FZooSClient as FZooSClient
from lgrad.federated._fzoos import FZooSServer as FZooSServer
from lgrad.federated._fzoos import fedzo_client as fedzo_client
from lgrad.federated._fzoos import fzoos as fzoos
from lgrad.federated._fzoos import fzoos_client as fzoos_client
from lgrad.federated._hyperfl import HyperFLClient as HyperFLClient
from lgrad.federated._hyperfl import HyperFLModel as HyperFLModel
from lgrad.federated._hyperfl import hyperfl as hyperfl
from lgrad.federated._hyperfl import hyperfl_client as hyperfl_client
from lgrad.federated._hyperfl import hyperfl_client_states as hyperfl_client_states
from lgrad.federated._curriculum import ORDERINGS as CURRICULUM_ORDERINGS
from lgrad.federated._curriculum import curriculum_training as curriculum_training
from lgrad.federated._curriculum import difficulty_selection as difficulty_selection
from lgrad.federated._curriculum import linear_pacing as linear_pacing
from lgrad.federated._curriculum import order_by_difficulty as order_by_difficulty
from lgrad.federated._dadao import DADAOConstants as DADAOConstants
from lgrad.federated._dadao import DADAOEvents as DADAOEvents
from lgrad.federated._dadao import DADAOState as DADAOState
from lgrad.federated._dadao import dadao_constants as dadao_constants
from lgrad.federated._dadao import dadao_events as dadao_events
from lgrad.federated._dadao import dadao_graph as dadao_graph
from lgrad.federated._dadao import dadao_init as dadao_init
from lgrad.federated._dadao import dadao_simulate as dadao_simulate
from lgrad.federated._dadao import dsgd_baseline as dsgd_baseline
from lgrad.federated._data import ClientData as ClientData
from lgrad.federated._data import client_minibatch as client_minibatch
from lgrad.federated._data import num_sampled as num_sampled
from lgrad.federated._data import sample_clients as sample_clients
from lgrad.federated._data import stack_clients as stack_clients
from lgrad.federated._data import stack_runs as stack_runs
from lgrad.federated._fedspeed import FedSpeedClientState as FedSpeedClientState
from lgrad.federated._fedspeed import fedspeed as fedspeed
from lgrad.federated._fedspeed import fedspeed_aggregator as fedspeed_aggregator
from lgrad.federated._fedspeed import fedspeed_client as fedspeed_client
from lgrad.federated._decentralized import DecentralizedState as DecentralizedState
from lgrad.federated._decentralized import Mix as Mix
from lgrad.federated._decentralized import decentralized as decentralized
from lgrad.federated._decentralized import gossip_mix as gossip_mix
from lgrad.federated._decentralized import mean_over_workers as mean_over_workers
from lgrad.federated._decentralized import neighbour_mix as neighbour_mix

__all__ = [
    "Aggregator",
    "client_minibatch",
    "ClientData",
    "ClientUpdate",
    "CURRICULUM_ORDERINGS",
    "curriculum_training",
    "dadao_constants",
    "dadao_events",
    "dadao_graph",
    "dadao_init",
    "dadao_simulate",
    "DADAOConstants",
    "DADAOEvents",
    "DADAOState",
    "decentralized",
    "DecentralizedState",
    "difficulty_selection",
    "dsgd_baseline",
    "FederatedAlgorithm",
    "fedspeed",
    "fedspeed_aggregator",
    "fedspeed_client",
    "FedSpeedClientState",
    "fedzo_client",
    "fzoos",
    "fzoos_client",
    "FZooSClient",
    "FZooSServer",
    "gossip_mix",
    "hyperfl",
    "hyperfl_client",
    "hyperfl_client_states",
    "HyperFLClient",
    "HyperFLModel",
    "linear_pacing",
    "local_training",
    "mean_aggregator",
    "mean_over_workers",
    "Mix",
    "neighbour_mix",
    "num_sampled",
    "order_by_difficulty",
    "rule_aggregator",
    "sample_clients",
    "server_algorithm",
    "ServerState",
    "shard_workers",
    "stack_clients",
    "stack_runs",
    "worker_algorithm",
    "WorkerState",
]

# Public transformation factories (checked by the shared transform table).
TRANSFORMS = ("decentralized", "mean_over_workers")
