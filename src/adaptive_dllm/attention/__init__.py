"""Attention: one seam (:func:`attend`), typed sparse plans and backends registered by name."""

from adaptive_dllm.attention.api import (
    AttentionHook,
    attend,
    available_backends,
    get_backend,
    register_backend,
)
from adaptive_dllm.attention.plan import SparsePlan, build_plan

__all__ = ["AttentionHook", "SparsePlan", "attend", "available_backends", "build_plan",
           "get_backend", "register_backend"]
