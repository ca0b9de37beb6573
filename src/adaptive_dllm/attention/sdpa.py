"""The ``"sdpa"`` backend: dense attention through PyTorch's fused kernels (flash, cuDNN,
memory-efficient), the default of :func:`~adaptive_dllm.attention.api.attend`.

Shape legend: B batch, H query heads, Hkv KV heads, L length, D head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from adaptive_dllm.attention.backends import BackendBase
from adaptive_dllm.attention.plan import SparsePlan
from adaptive_dllm.errors import AdllmError


class SdpaBackend(BackendBase):
    """Dense only: ``F.scaled_dot_product_attention`` with GQA, padded keys masked."""

    name = "sdpa"

    def supports(self, *, device_type: str, head_dim: int, block_size: int) -> str | None:
        return "the 'sdpa' backend is dense only; use backend 'flex' or 'reference'"

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor:
        """q (B, H, L, D), k and v (B, Hkv, L, D), key_mask (B, L) -> (B, H, L, D)."""
        if plan is not None:
            raise AdllmError("the 'sdpa' backend is dense only; use backend 'flex' or 'reference'")
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
