"""GFlowNets: training objectives as pure losses over batched trajectories, and environments.

Losses (:mod:`lgrad.gflownet._losses`): trajectory balance, detailed balance and
forward-looking detailed balance (FL-DB, Pan et al. 2023) with the paper's fixed
terminal flow or the released code's learned one (``fix_terminal``). Environments:
the hypergrid and the set task as pure functions; batched rollouts in one
``lax.scan``; exact flows on a small DAG as the reference (docs/papers/flgfn-credit.md).
These are losses, not optax transforms: train them with any optimizer.
"""
from lgrad.gflownet._envs import Environment as Environment
from lgrad.gflownet._envs import hypergrid as hypergrid
from lgrad.gflownet._envs import hypergrid_log_reward as hypergrid_log_reward
from lgrad.gflownet._envs import hypergrid_states as hypergrid_states
from lgrad.gflownet._envs import hypergrid_terminal_distribution as hypergrid_terminal_distribution
from lgrad.gflownet._envs import set_energies as set_energies
from lgrad.gflownet._envs import set_env as set_env
from lgrad.gflownet._envs import set_top_rewards as set_top_rewards
from lgrad.gflownet._exact import exact_flow_batch as exact_flow_batch
from lgrad.gflownet._exact import tiny_dag as tiny_dag
from lgrad.gflownet._losses import detailed_balance as detailed_balance
from lgrad.gflownet._losses import detailed_balance_residuals as detailed_balance_residuals
from lgrad.gflownet._losses import forward_looking_db as forward_looking_db
from lgrad.gflownet._losses import forward_looking_residuals as forward_looking_residuals
from lgrad.gflownet._losses import trajectory_balance as trajectory_balance
from lgrad.gflownet._losses import trajectory_balance_residuals as trajectory_balance_residuals
from lgrad.gflownet._model import mlp_apply as mlp_apply
from lgrad.gflownet._model import mlp_init as mlp_init
from lgrad.gflownet._model import policy_model as policy_model
from lgrad.gflownet._sampling import Trajectories as Trajectories
from lgrad.gflownet._sampling import masked_log_softmax as masked_log_softmax
from lgrad.gflownet._sampling import sample_trajectories as sample_trajectories
from lgrad.gflownet._sampling import trajectory_terms as trajectory_terms

TRANSFORMS: tuple[str, ...] = ()  # losses and environments only: no optax transform here

__all__ = [
    "Environment",
    "Trajectories",
    "detailed_balance",
    "detailed_balance_residuals",
    "exact_flow_batch",
    "forward_looking_db",
    "forward_looking_residuals",
    "hypergrid",
    "hypergrid_log_reward",
    "hypergrid_states",
    "hypergrid_terminal_distribution",
    "masked_log_softmax",
    "mlp_apply",
    "mlp_init",
    "policy_model",
    "sample_trajectories",
    "set_energies",
    "set_env",
    "set_top_rewards",
    "tiny_dag",
    "trajectory_balance",
    "trajectory_balance_residuals",
    "trajectory_terms",
]
