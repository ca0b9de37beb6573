"""Head-adaptive block-sparse attention: config, schedule, scoring, plans and the session.

``SparseConfig`` is the user-facing object; ``generate(..., sparse=cfg)`` asks it for a
``SparseSession`` per generation. Scorers and the allocator build immutable ``SparsePlan``s;
the attention backends (``flex``, ``reference``) only execute them.
"""

from adaptive_dllm.sparsity.config import BLOCK_SIZES, SparseConfig
from adaptive_dllm.sparsity.cost import CostModel, Decision
from adaptive_dllm.sparsity.plan import SparsePlan, build_plan
from adaptive_dllm.sparsity.schedule import Schedule, dense_step_count
from adaptive_dllm.sparsity.scoring import block_mass
from adaptive_dllm.sparsity.session import SparseSession

__all__ = [
    "BLOCK_SIZES",
    "CostModel",
    "Decision",
    "Schedule",
    "SparseConfig",
    "SparsePlan",
    "SparseSession",
    "block_mass",
    "build_plan",
    "dense_step_count",
]
