"""Triton kernel: exact block attention mass without materialising any L x L tensor.

Shape legend: B batch, H query heads, Hkv KV heads, G = H // Hkv, L length, D head dim,
bs block size, N = ceil(L / bs).

One program per (query block i, batch b, query head h) holds its bs x D query tile and makes two
passes over the keys of its KV head ``h // G`` (K is never repeated):

1. online row maximum and sum of ``exp2(s)`` over all valid keys -> per-row logsumexp (base 2);
2. for every key block j: ``sum_rows sum_cols exp2(s - lse)`` over valid rows -> M[b, h, i, j].

Scores use ``s = (q . k) * log2(e) / sqrt(D)`` with float32 accumulation, so both passes use the
hardware ``exp2``. FLOPs: two Q K^T products (the dense attention forward does Q K^T and P V), no
P V; memory: the (B, H, N, N) float32 output only. The pure-torch twin is
:func:`adaptive_dllm.sparsity.scoring.block_mass_torch`.

Sequence lengths are runtime arguments marked ``do_not_specialize`` so a new prompt length does not
recompile the kernel.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["L", "N"])
def _block_mass_kernel(
    Q, K, VALID, OUT,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb,
    H, G, L, N, qk_scale,
    HEAD_DIM: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BS: tl.constexpr,
    D: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // G
    offs_m = i * BS + tl.arange(0, BS)
    offs_d = tl.arange(0, D)
    d_ok = offs_d < HEAD_DIM
    in_len_m = offs_m < L
    row_ok = in_len_m
    if HAS_VALID:
        row_ok = row_ok & (tl.load(VALID + b * stride_vb + offs_m, mask=in_len_m, other=0) != 0)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :]
    q = tl.load(q_ptrs, mask=in_len_m[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh

    # Pass 1: logsumexp (base 2) of every query row over all valid keys.
    m_i = tl.full([BS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BS], dtype=tl.float32)
    for j in range(0, N):
        offs_n = j * BS + tl.arange(0, BS)
        in_len_n = offs_n < L
        col_ok = in_len_n
        if HAS_VALID:
            col_ok = col_ok & (tl.load(VALID + b * stride_vb + offs_n, mask=in_len_n, other=0) != 0)
        k = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None],
                    mask=in_len_n[None, :] & d_ok[:, None], other=0.0)  # (D, BS)
        s = tl.dot(q, k) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    # Rows without any valid key (or outside L / padding) contribute nothing.
    lse = tl.where((l_i > 0.0) & row_ok, m_i + tl.log2(l_i), float("inf"))

    # Pass 2: probability mass per key block.
    out_base = OUT + ((b * H + h) * N + i) * N
    for j in range(0, N):
        offs_n = j * BS + tl.arange(0, BS)
        in_len_n = offs_n < L
        col_ok = in_len_n
        if HAS_VALID:
            col_ok = col_ok & (tl.load(VALID + b * stride_vb + offs_n, mask=in_len_n, other=0) != 0)
        k = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None],
                    mask=in_len_n[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, k) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        tl.store(out_base + j, tl.sum(tl.sum(p, 1), 0))


def block_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact block mass per query head, float32 (B, H, N, N), on the GPU.

    Args:
        q: (B, H, L, D) queries (any strides with a contiguous last dim).
        k: (B, Hkv, L, D) keys.
        block_size: bs, a power of two >= 16.
        key_mask: (B, L) bool, True = real token.
    """
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    bs = block_size
    N = -(-L // bs)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    out = torch.empty(B, H, N, N, device=q.device, dtype=torch.float32)
    if key_mask is None:
        valid, stride_vb = q, 0  # unused pointer
    else:
        valid = key_mask.to(torch.int8).contiguous()
        stride_vb = valid.stride(0)
    d_pow2 = max(16, triton.next_power_of_2(D))
    _block_mass_kernel[(N, B * H)](
        q, k, valid, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        stride_vb,
        H, H // Hkv, L, N, math.log2(math.e) / math.sqrt(D),
        HEAD_DIM=D, HAS_VALID=key_mask is not None, BS=bs, D=d_pow2,
        num_warps=8 if bs >= 128 else 4, num_stages=2,
    )
    return out
