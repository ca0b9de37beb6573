"""The ``"gather"`` backend: exact block-sparse attention by gathering the kept key blocks.

Shape legend:
    B batch (Bp: the plan's batch, 1 or B), H query heads, Hkv KV heads, U plan units,
    G = H // U query heads per unit, L length, D head dim, bs block size, N = ceil(L / bs)
    query (and key) blocks, kmax = most kept key blocks in a row, S = kmax * bs gathered keys
    per row, n query blocks of one chunk.

For query block i of unit u, with kept key blocks ``idx[u, i, :]`` (``-1``-padded), the gathered
keys are the positions ``P = {idx * bs + t : 0 <= t < bs}`` and

    out[h, i*bs + r] = sum_{j in P, valid(j)} softmax_j(q[h, i*bs + r] . k[g(h), j] / sqrt(D))
                       v[g(h), j]

where g(h) = h // (H // Hkv) is query head h's KV head and ``valid(j)`` excludes ``-1`` slots,
positions ``>= L`` (the last, partial block) and keys that ``key_mask`` marks as padding. This is
the reference oracle's equation with the element mask replaced by index arithmetic: memory and
work scale with the kept blocks (``N * S`` per unit) instead of ``L * L``.

The G query heads of a unit and the bs queries of a block share one gather: queries are
reshaped to (B, U, N, G * bs, D), so with KV-head units one K/V gather serves the whole query
group; with query-head units (G = 1) each unit reads its head's KV head. Scores, softmax and the
weighted sum run in float32 (exact against the reference); the output is cast to q's dtype.
A long sequence is processed ``n`` query blocks at a time so the (n, G * bs, S) score tensor
stays below :attr:`GatherOptions.max_chunk_elements`. Runs on any device; written for the CPU,
where the reference materialises (B, H, L, L) and there is no Triton or compiled flex kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adaptive_dllm.attention.backends import BackendBase
from adaptive_dllm.attention.plan import SparsePlan, check_plan_fits
from adaptive_dllm.attention.reference import REFERENCE_BLOCK_SIZES
from adaptive_dllm.errors import AdllmError


@dataclass(frozen=True)
class GatherOptions:
    """Tuning of the ``gather`` backend.

    Attributes:
        max_chunk_elements: Most float32 score elements (B * U * n * G * bs * S) computed at once;
            the query blocks are processed in chunks of n blocks below it (at least one block).
            2**19 (2 MiB of scores) keeps a chunk's working set in a CPU's caches: at 2080
            tokens on one EPYC thread it was ~1.3x faster than one chunk of 2**24.
    """

    max_chunk_elements: int = 2**19

    def __post_init__(self) -> None:
        n = self.max_chunk_elements
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AdllmError(f"GatherOptions.max_chunk_elements={n!r} must be a positive integer")


@dataclass(frozen=True)
class GatherIndex:
    """A plan's gather positions, derived once (``GatherBackend.prepare``).

    Attributes:
        positions: (Bp, U, N, S) int64 key positions, clamped into [0, L) (invalid slots read a
            real key and are masked).
        valid: (Bp, U, N, S) bool, False at ``-1`` padding and at positions >= L.
    """

    positions: torch.Tensor
    valid: torch.Tensor


class GatherBackend(BackendBase):
    """Block-sparse attention that gathers only the kept key/value blocks (any device)."""

    name = "gather"
    block_sizes = REFERENCE_BLOCK_SIZES

    def __init__(self, options: GatherOptions | None = None) -> None:
        super().__init__()
        self.options = options or GatherOptions()

    def prepare(self, plan: SparsePlan, n_heads: int) -> GatherIndex:
        """The plan's key positions and their validity (independent of the key mask)."""
        return gather_index(plan)

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor:
        """q (B, H, L, D), k and v (B, Hkv, L, D), key_mask (B, L) bool or None -> (B, H, L, D)
        in q's dtype. Without a plan: dense attention (PyTorch SDPA, padded keys masked)."""
        if plan is None:
            mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  enable_gqa=q.shape[1] != k.shape[1])
        plan = check_plan_fits(plan, q, self.name)
        index = gather_index(plan) if prepared is None else prepared
        return gather_attention(q, k, v, plan=plan, index=index, key_mask=key_mask,
                                max_chunk_elements=self.options.max_chunk_elements)


def gather_index(plan: SparsePlan) -> GatherIndex:
    """Key positions ``idx * bs + t`` of every kept slot of ``plan``, and which are real."""
    bs, L = plan.block_size, plan.seq_len
    idx = plan.indices.long()  # (Bp, U, N, kmax)
    Bp, U, N, kmax = idx.shape
    offsets = torch.arange(bs, device=idx.device)
    pos = idx[..., None] * bs + offsets  # (Bp, U, N, kmax, bs)
    valid = (idx[..., None] >= 0) & (pos < L)
    pos = pos.clamp(0, L - 1).reshape(Bp, U, N, kmax * bs)
    return GatherIndex(positions=pos, valid=valid.reshape(Bp, U, N, kmax * bs))


def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, plan: SparsePlan,
                     index: GatherIndex, key_mask: torch.Tensor | None = None,
                     max_chunk_elements: int = GatherOptions.max_chunk_elements) -> torch.Tensor:
    """Exact block-sparse attention following ``plan`` (see the module doc).

    Args:
        q: (B, H, L, D); k, v: (B, Hkv, L, D).
        plan: The layer's plan (batch 1 or B, length L, U * G == H).
        index: ``gather_index(plan)``.
        key_mask: (B, L) bool, True = real key, or None.
        max_chunk_elements: Bound on the score elements computed at once.

    Returns:
        (B, H, L, D) in q's dtype; a query row with no allowed key is 0 (as the reference).
    """
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    U, G, bs, N = plan.n_units, plan.group, plan.block_size, plan.n_blocks
    per_kv = H // Hkv
    if U * G != H or per_kv % G:
        raise AdllmError(f"plan of {U} units x {G} heads cannot run on {H} query heads and "
                         f"{Hkv} KV heads")
    # KV head of each unit: the KV head of its first query head, which all G heads share
    # (G divides H / Hkv; G = H / Hkv is the KV-head unit itself).
    kv_of_unit = torch.arange(U, device=q.device) * G // per_kv
    kf = k.float().index_select(1, kv_of_unit)  # (B, U, L, D) contiguous, U * L * D
    vf = v.float().index_select(1, kv_of_unit)
    qf = F.pad(q.float(), (0, 0, 0, N * bs - L))  # (B, H, N*bs, D)
    qf = qf.view(B, U, G, N, bs, D).permute(0, 1, 3, 2, 4, 5).reshape(B, U, N, G * bs, D)
    S = index.positions.shape[-1]
    per_block = B * U * G * bs * S
    step = max(1, max_chunk_elements // max(1, per_block))
    outs = [_attend_chunk(qf[:, :, n0:n0 + step], kf, vf, index, key_mask, n0, step)
            for n0 in range(0, N, step)]
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # (B, U, N, G*bs, D)
    out = out.view(B, U, N, G, bs, D).permute(0, 1, 3, 2, 4, 5).reshape(B, H, N * bs, D)
    return out[:, :, :L].to(q.dtype)


def _attend_chunk(qc: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, index: GatherIndex,
                  key_mask: torch.Tensor | None, n0: int, step: int) -> torch.Tensor:
    """Attention of query blocks ``[n0, n0 + n)``: qc (B, U, n, G*bs, D) float32, kf and vf
    (B, U, L, D) float32 contiguous -> (B, U, n, G*bs, D) float32."""
    B, U, n, M, D = qc.shape
    L = kf.shape[2]
    pos = index.positions[:, :, n0:n0 + step]  # (Bp, U, n, S)
    allowed = index.valid[:, :, n0:n0 + step].expand(B, U, n, -1)
    S = pos.shape[-1]
    if key_mask is not None:
        real = key_mask.bool().gather(1, pos.expand(B, U, n, S).reshape(B, U * n * S))
        allowed = allowed & real.view(B, U, n, S)
    # Whole rows of the (B * U * L, D) keys are copied (index_select), cheaper than an
    # element-wise gather.
    rows = pos + (torch.arange(B * U, device=pos.device) * L).view(B, U, 1, 1)
    rows = rows.reshape(-1)
    k_sel = kf.reshape(B * U * L, D).index_select(0, rows).view(B * U * n, S, D)
    v_sel = vf.reshape(B * U * L, D).index_select(0, rows).view(B * U * n, S, D)
    # 0 where allowed, -inf elsewhere, added by the score matmul itself (one pass).
    bias = torch.zeros(B * U * n, 1, S, device=qc.device).masked_fill_(
        ~allowed.reshape(B * U * n, 1, S), float("-inf"))
    scores = torch.baddbmm(bias, qc.reshape(B * U * n, M, D), k_sel.transpose(1, 2),
                           alpha=1.0 / math.sqrt(D))  # (B*U*n, G*bs, S)
    probs = torch.softmax(scores, dim=-1)
    if not bool(allowed.any(-1).all()):
        # A row with no allowed key (a padded query whose blocks are all padding) gives NaN:
        # zero it, as the reference does.
        probs = torch.nan_to_num_(probs, nan=0.0)
    return (probs @ v_sel).view(B, U, n, M, D)
