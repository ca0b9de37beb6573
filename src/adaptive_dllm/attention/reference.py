"""Eager masked attention: the oracle every backend is tested against.

Shape legend:
    B batch, H query heads, Hkv key/value heads, G = H // Hkv, L length, D head dim,
    bs block size, N = ceil(L / bs) key (and query) blocks.

Computes the full (B, H, L, L) score matrix, so it is only for tests, tiny models and CPU runs.
A sparse plan (:class:`~adaptive_dllm.attention.plan.SparsePlan`) is expanded to an element mask:
query i of head h may see key j iff key block ``j // bs`` is among the blocks kept for query block
``i // bs`` by h's unit (unit ``h // plan.group``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adaptive_dllm.attention.backends import BackendBase
from adaptive_dllm.attention.plan import SparsePlan
from adaptive_dllm.errors import AdllmError

#: Block sizes the eager oracle accepts (any power of two in this range; tests use small ones).
REFERENCE_BLOCK_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)


class ReferenceBackend(BackendBase):
    """The eager oracle as a backend: dense or sparse, any device, materialises (B, H, L, L)."""

    name = "reference"
    block_sizes = REFERENCE_BLOCK_SIZES

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor:
        return reference_attention(q, k, v, key_mask=key_mask, plan=plan)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    plan: SparsePlan | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, computed eagerly in float32.

    Args:
        q: (B, H, L, D); k, v: (B, Hkv, L, D).
        key_mask: (B, L) bool, True = real key.
        plan: the layer's SparsePlan, or None for dense.

    Returns:
        (B, H, L, D) in q's dtype.
    """
    B, H, L, D = q.shape
    group = H // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)  # (B, H, L, D)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) / math.sqrt(D)  # (B, H, L, L)
    allowed = torch.ones(1, 1, L, L, dtype=torch.bool, device=q.device)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    if plan is not None:
        if plan.seq_len != L:
            raise AdllmError(f"plan built for length {plan.seq_len} cannot run on length {L}")
        blocks = plan.block_mask()  # (B|1, U, N, N)
        if blocks.shape[1] != H:
            blocks = blocks.repeat_interleave(H // blocks.shape[1], dim=1)  # (B|1, H, N, N)
        bs = plan.block_size
        elem = blocks.repeat_interleave(bs, dim=2).repeat_interleave(bs, dim=3)[..., :L, :L]
        allowed = allowed & elem
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A query row with no allowed key (only possible for padded queries) gives NaN; zero it.
    probs = torch.nan_to_num(probs, nan=0.0)
    return (probs @ vf).to(q.dtype)
