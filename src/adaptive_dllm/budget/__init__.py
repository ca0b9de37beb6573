"""Budgets: importance -> relative weights -> exact integer kept blocks per allocation unit."""

from adaptive_dllm.budget.allocator import Allocation, BudgetMode, allocate
from adaptive_dllm.budget.weights import (
    GqaMode,
    GroupReduce,
    Normalization,
    relative_weights,
    uniform_weights,
)

__all__ = [
    "Allocation",
    "BudgetMode",
    "GqaMode",
    "GroupReduce",
    "Normalization",
    "allocate",
    "relative_weights",
    "uniform_weights",
]
