"""Budgets: importance -> relative weights -> exact integer kept blocks per allocation unit."""

from adaptive_dllm.budget.allocator import Allocation, BudgetMode, allocate
from adaptive_dllm.budget.weights import (
    GqaUnit,
    GroupReduce,
    Normalization,
    relative_weights,
    uniform_weights,
)

__all__ = [
    "Allocation",
    "BudgetMode",
    "GqaUnit",
    "GroupReduce",
    "Normalization",
    "allocate",
    "relative_weights",
    "uniform_weights",
]
