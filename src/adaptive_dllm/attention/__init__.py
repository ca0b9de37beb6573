"""Attention: one seam (:func:`attend`) and backends registered by name."""

from adaptive_dllm.attention.api import AttentionHook, attend, available_backends, register_backend

__all__ = ["AttentionHook", "attend", "available_backends", "register_backend"]
