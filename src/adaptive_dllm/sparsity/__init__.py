"""Head-adaptive block-sparse attention: config, schedule, planner, the session and its stats.

``SparseConfig`` is the user-facing object; ``generate(..., sparse=cfg)`` builds a
``SparseSession`` per generation from it. The planner builds immutable ``SparsePlan``s
(:mod:`adaptive_dllm.attention.plan`); the attention backends only execute them.
"""

from adaptive_dllm.attention.mass import block_mass
from adaptive_dllm.attention.plan import SparsePlan, build_plan
from adaptive_dllm.sparsity.config import BLOCK_SIZES, SparseConfig
from adaptive_dllm.sparsity.cost import CostModel, Decision
from adaptive_dllm.sparsity.planner import Planner
from adaptive_dllm.sparsity.schedule import Schedule, dense_step_count
from adaptive_dllm.sparsity.session import SparseSession, build_session
from adaptive_dllm.sparsity.stats import SparseStats

__all__ = [
    "BLOCK_SIZES",
    "CostModel",
    "Decision",
    "Planner",
    "Schedule",
    "SparseConfig",
    "SparsePlan",
    "SparseSession",
    "SparseStats",
    "block_mass",
    "build_plan",
    "build_session",
    "dense_step_count",
]
