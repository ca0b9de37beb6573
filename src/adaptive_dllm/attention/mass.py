"""Block importance: the attention mass of every (unit, query block, key block).

Shape legend:
    B batch, H query heads, Hkv KV heads, G = H // Hkv, U allocation units (Hkv or H),
    L length, D head dim, bs block size, N = ceil(L / bs) blocks (query and key).

The exact mass of key block j for query block i of head h is

    M[b, h, i, j] = sum_{q in block i} sum_{k in block j} softmax_k(q . k / sqrt(D))

(rows that are padding contribute nothing, padded keys get no probability). For a KV-head unit
the masses of its G query heads are summed (the group is scored once, DESIGN §3).

Nothing of size (B, H, L, L) is materialised:

- on CUDA a Triton kernel (:mod:`~adaptive_dllm.kernels.block_mass`) scores every key tile once
  (block logsumexps, then per-block sums of ``exp(s - lse)``) and writes only the (B, H, N, N)
  result;
- elsewhere (and as the oracle in tests) :func:`block_mass_torch` works on query chunks of many
  blocks at a time (a loop over large chunks, never over single blocks), in float32.

:func:`pooled_block_scores` is the cheap estimator: softmax over key blocks of block-mean queries
against block-mean keys (plus the log of the valid keys per block), O(N^2 D) instead of
O(L^2 D). It ranks blocks approximately; ``tests/attention/test_mass.py`` measures how much
exact mass its choices keep.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from adaptive_dllm._checks import check_choice
from adaptive_dllm.budget.weights import GqaUnit
from adaptive_dllm.kernels.support import n_blocks, triton_available

#: Block scores: the exact attention mass, or the pooled (block-mean q/k) estimate.
Estimator = Literal["exact", "pooled"]

#: Bytes of float32 scores one chunk of :func:`block_mass_torch` may hold.
CHUNK_BYTES = 256 * 2**20


def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
    units: GqaUnit = "kv",
    estimator: Estimator = "exact",
) -> torch.Tensor:
    """Block scores per allocation unit, float32 (B, U, N, N).

    Args:
        q: (B, H, L, D) post-RoPE queries.
        k: (B, Hkv, L, D) post-RoPE keys.
        block_size: bs.
        key_mask: (B, L) bool, True = real token; padded keys get no mass and padded query rows
            contribute none.
        units: ``"kv"`` sums each GQA group's query heads (U = Hkv); ``"query"`` keeps them (U = H).
        estimator: ``"exact"`` mass or ``"pooled"`` estimate.
    """
    check_choice("units", units, get_args(GqaUnit))
    check_choice("estimator", estimator, get_args(Estimator))
    if estimator == "pooled":
        per_head = pooled_block_scores(q, k, block_size=block_size, key_mask=key_mask)
    elif q.is_cuda and triton_available():
        from adaptive_dllm.kernels.block_mass import block_mass_triton

        per_head = block_mass_triton(q, k, block_size=block_size, key_mask=key_mask)
    else:
        per_head = block_mass_torch(q, k, block_size=block_size, key_mask=key_mask)
    return reduce_units(per_head, k.shape[1], units)


def reduce_units(per_head: torch.Tensor, n_kv_heads: int, units: GqaUnit) -> torch.Tensor:
    """(B, H, N, N) per query head -> (B, U, N, N): sum over each KV head's group for ``kv``."""
    check_choice("units", units, get_args(GqaUnit))
    if units == "query" or per_head.shape[1] == n_kv_heads:
        return per_head
    B, H, N, _ = per_head.shape
    return per_head.view(B, n_kv_heads, H // n_kv_heads, N, N).sum(2)


def block_mass_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """Exact block mass per query head, float32 (B, H, N, N), chunked over query blocks.

    K/V are not repeated: queries are viewed as (B, Hkv, G, rows, D) against (B, Hkv, L, D).
    """
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    bs = block_size
    N = n_blocks(L, bs)
    Lp = N * bs
    kf = k.float()
    valid = None if key_mask is None else key_mask.bool()
    row_weight = torch.ones(B, Lp, device=q.device)
    row_weight[:, L:] = 0
    if valid is not None:
        row_weight[:, :L] = valid.float()
    blocks_per_chunk = max(1, chunk_bytes // max(1, 4 * B * H * bs * L))
    out = torch.empty(B, H, N, N, device=q.device, dtype=torch.float32)
    qp = F.pad(q, (0, 0, 0, Lp - L))  # (B, H, Lp, D): padded rows have zero weight
    for start in range(0, N, blocks_per_chunk):
        stop = min(N, start + blocks_per_chunk)
        rows = slice(start * bs, stop * bs)
        qc = qp[:, :, rows].float().view(B, Hkv, G, (stop - start) * bs, D)
        s = torch.einsum("bkgrd,bkld->bkgrl", qc, kf) / math.sqrt(D)  # (B, Hkv, G, R, L)
        if valid is not None:
            s = s.masked_fill(~valid[:, None, None, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num_(0.0)
        p = p * row_weight[:, None, None, rows, None]
        p = F.pad(p, (0, Lp - L)).view(B, Hkv, G, stop - start, bs, N, bs)
        out[:, :, start:stop] = p.sum(dim=(4, 6)).view(B, H, stop - start, N)
    return out


def pooled_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cheap block scores per query head, float32 (B, H, N, N).

    ``bs * softmax_j(mean_q(i) . mean_k(j) / sqrt(D) + log n_valid(j))``: the mass the block-mean
    query would give each key block if all its keys equalled their mean. Approximate.
    """
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    bs = block_size
    N = n_blocks(L, bs)
    Lp = N * bs
    valid = torch.ones(B, L, device=q.device) if key_mask is None else key_mask.float()
    valid_p = F.pad(valid, (0, Lp - L)).view(B, N, bs)
    n_valid = valid_p.sum(-1)  # (B, N)
    kp = F.pad(k.float() * valid[:, None, :, None], (0, 0, 0, Lp - L)).view(B, Hkv, N, bs, D)
    k_mean = kp.sum(3) / n_valid.clamp_min(1)[:, None, :, None]  # (B, Hkv, N, D)
    qp = F.pad(q.float() * valid[:, None, :, None], (0, 0, 0, Lp - L)).view(B, H, N, bs, D)
    q_mean = qp.sum(3) / n_valid.clamp_min(1)[:, None, :, None]  # (B, H, N, D)
    k_mean = k_mean.repeat_interleave(H // Hkv, dim=1)  # (B, H, N, D): N x D, not L x D
    s = q_mean @ k_mean.transpose(-1, -2) / math.sqrt(D)  # (B, H, N, N)
    s = s + n_valid.clamp_min(1e-30).log()[:, None, None, :]
    s = s.masked_fill((n_valid == 0)[:, None, None, :], float("-inf"))
    probs = torch.softmax(s, dim=-1).nan_to_num_(0.0)
    return probs * n_valid[:, None, :, None]  # rows weighted by their valid queries

