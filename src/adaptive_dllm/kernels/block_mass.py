"""Triton kernels: exact block attention mass without materialising any L x L tensor.

Shape legend: B batch, H query heads, Hkv KV heads, G = H // Hkv, L length, D head dim,
DP padded head dim (kernel tiles), bs block size, N = ceil(L / bs), Hc heads per chunk.

Scores are ``s = (q . k) * log2(e) / sqrt(D)`` (float32 accumulation, hardware ``exp2``); the mass
of key block j for query block i is ``M[i, j] = sum_{r in i} sum_{c in j} exp2(s_rc - lse_r)``
with ``lse_r`` the row's base-2 logsumexp over all valid keys. K is never repeated: query head h
reads KV head ``h // G``.

Default, **one pass over the keys** (:func:`block_mass_triton`):

1. ``_block_lse_kernel``, one program per (query block i, head): for every key block j it computes
   the tile's scores once and stores each row's *block* logsumexp ``b[r, j] = log2 sum_{c in j}
   exp2(s_rc)`` (one exp per score, like the softmax of a dense attention forward without P V).
   The (Hc, N, L) float32 scratch is reused chunk by chunk over heads (``scratch_bytes``).
2. ``_mass_from_block_lse_kernel``: ``lse_r = log2 sum_j exp2(b[r, j])`` and
   ``M[i, j] = sum_{r in i} exp2(b[r, j] - lse_r)``: N exps per row instead of L.

``method="twopass"`` (``_block_mass_kernel``) recomputes the scores in a second pass instead of
storing block logsumexps: no scratch, twice the Q K^T work and exps.

The pure-torch twin is :func:`adaptive_dllm.attention.mass.block_mass_torch`. Sequence lengths are
runtime arguments marked ``do_not_specialize`` so a new prompt length does not recompile; strides
are specialised (Triton keys them on divisibility by 16 only, which a new length does not change
for head dims that are multiples of 16) so that the loads vectorise.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import triton
import triton.language as tl

from adaptive_dllm.kernels.support import check_offsets, n_blocks, padded_head_dim
from adaptive_dllm.kernels.tiles import load_q_rows, score_tile


@triton.jit(do_not_specialize=["stride_vb", "H", "L", "N"])
def _block_mass_kernel(
    Q, K, VALID, OUT,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb,
    H, G, L, N, qk_scale,
    HEAD_DIM: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BS: tl.constexpr,
    DP: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // G
    q, offs_m, offs_d, d_ok, in_len_m = load_q_rows(Q, b, h, i * BS, L, stride_qb, stride_qh,
                                                    stride_ql, HEAD_DIM, BS, DP)
    valid_base = VALID + b * stride_vb
    row_ok = in_len_m
    if HAS_VALID:
        row_ok = row_ok & (tl.load(valid_base + offs_m, mask=in_len_m, other=0) != 0)
    k_base = K + b * stride_kb + hk * stride_kh

    # Pass 1: logsumexp (base 2) of every query row over all valid keys.
    m_i = tl.full([BS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BS], dtype=tl.float32)
    for j in range(0, N):
        s = score_tile(q, j, k_base, valid_base, offs_d, d_ok, L, stride_kl, qk_scale,
                       HAS_VALID, HEAD_DIM != DP, BS)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    # Rows without any valid key (or outside L / padding) contribute nothing.
    lse = tl.where((l_i > 0.0) & row_ok, m_i + tl.log2(l_i), float("inf"))

    # Pass 2: probability mass per key block.
    out_base = OUT + ((b * H + h) * N + i) * N
    for j in range(0, N):
        s = score_tile(q, j, k_base, valid_base, offs_d, d_ok, L, stride_kl, qk_scale,
                       HAS_VALID, HEAD_DIM != DP, BS)
        p = tl.exp2(s - lse[:, None])
        tl.store(out_base + j, tl.sum(tl.sum(p, 1), 0))


@triton.jit(do_not_specialize=["stride_vb", "Hc", "h0", "L", "N"])
def _block_lse_kernel(
    Q, K, VALID, BUF,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb,
    Hc, h0, G, L, N, qk_scale,
    HEAD_DIM: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BS: tl.constexpr,
    DP: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hc).to(tl.int64)
    h = (bh % Hc + h0).to(tl.int64)
    hk = h // G
    q, offs_m, offs_d, d_ok, in_len_m = load_q_rows(Q, b, h, i * BS, L, stride_qb, stride_qh,
                                                    stride_ql, HEAD_DIM, BS, DP)
    k_base = K + b * stride_kb + hk * stride_kh
    valid_base = VALID + b * stride_vb
    buf_base = BUF + bh.to(tl.int64) * N * L
    for j in range(0, N):
        s = score_tile(q, j, k_base, valid_base, offs_d, d_ok, L, stride_kl, qk_scale,
                       HAS_VALID, HEAD_DIM != DP, BS)
        m = tl.max(s, 1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        l_blk = tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        blk = tl.where(l_blk > 0.0, m_safe + tl.log2(l_blk), float("-inf"))
        tl.store(buf_base + j * L + offs_m, blk, mask=in_len_m)


@triton.jit(do_not_specialize=["stride_vb", "H", "Hc", "h0", "L", "N"])
def _mass_from_block_lse_kernel(
    BUF, VALID, OUT,
    stride_vb,
    H, Hc, h0, L, N,
    HAS_VALID: tl.constexpr,
    BS: tl.constexpr,
    JB: tl.constexpr,
):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hc).to(tl.int64)
    h = (bh % Hc + h0).to(tl.int64)
    offs_m = i * BS + tl.arange(0, BS)
    in_len_m = offs_m < L
    row_ok = in_len_m
    if HAS_VALID:
        row_ok = row_ok & (tl.load(VALID + b * stride_vb + offs_m, mask=in_len_m, other=0) != 0)
    buf_base = BUF + bh.to(tl.int64) * N * L
    m_r = tl.full([BS], float("-inf"), dtype=tl.float32)
    s_r = tl.zeros([BS], dtype=tl.float32)
    for j0 in range(0, N, JB):
        offs_j = j0 + tl.arange(0, JB)
        tile = tl.load(buf_base + offs_j[:, None] * L + offs_m[None, :],
                       mask=(offs_j < N)[:, None] & in_len_m[None, :], other=float("-inf"))
        m_new = tl.maximum(m_r, tl.max(tile, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_r = s_r * tl.exp2(m_r - m_safe) + tl.sum(tl.exp2(tile - m_safe[None, :]), 0)
        m_r = m_new
    lse = tl.where((s_r > 0.0) & row_ok, m_r + tl.log2(s_r), float("inf"))
    out_base = OUT + ((b * H + h) * N + i) * N
    for j0 in range(0, N, JB):
        offs_j = j0 + tl.arange(0, JB)
        tile = tl.load(buf_base + offs_j[:, None] * L + offs_m[None, :],
                       mask=(offs_j < N)[:, None] & in_len_m[None, :], other=float("-inf"))
        mass = tl.sum(tl.exp2(tile - lse[None, :]), 1)
        tl.store(out_base + offs_j, mass, mask=offs_j < N)


#: Scratch memory the one-pass kernel may use for block logsumexps (heads are chunked to fit).
SCRATCH_BYTES = 512 * 2**20
#: The two scoring kernels (see the module docstring).
MassMethod = Literal["onepass", "twopass"]


def block_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
    method: MassMethod = "onepass",
    scratch_bytes: int = SCRATCH_BYTES,
) -> torch.Tensor:
    """Exact block mass per query head, float32 (B, H, N, N), on the GPU.

    Args:
        q: (B, H, L, D) queries (any strides with a contiguous last dim).
        k: (B, Hkv, L, D) keys.
        block_size: bs, a power of two >= 16.
        key_mask: (B, L) bool, True = real token.
        method: ``"onepass"`` (block logsumexps in a scratch buffer, then the masses) or
            ``"twopass"`` (recompute the scores; no scratch).
        scratch_bytes: Upper bound of the one-pass scratch; heads are processed in chunks.
    """
    if method == "twopass":
        return _block_mass_twopass(q, k, block_size=block_size, key_mask=key_mask)
    q, k, valid, stride_vb, out = _launch_inputs(q, k, block_size, key_mask)
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    bs = block_size
    N = out.shape[-1]
    per_head = B * N * L * 4
    hc = max(1, min(H, scratch_bytes // max(1, per_head)))
    buf = torch.empty(B * hc * N * L, device=q.device, dtype=torch.float32)
    dp = padded_head_dim(D)
    scale = math.log2(math.e) / math.sqrt(D)
    for h0 in range(0, H, hc):
        n_h = min(hc, H - h0)
        _block_lse_kernel[(N, B * n_h)](
            q, k, valid, buf,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            stride_vb,
            n_h, h0, H // Hkv, L, N, scale,
            HEAD_DIM=D, HAS_VALID=key_mask is not None, BS=bs, DP=dp,
            num_warps=8 if bs >= 128 else 4, num_stages=3,
        )
        masses_from_block_lse(buf, valid if key_mask is not None else None, stride_vb, out,
                              h0=h0, n_heads=n_h, seq_len=L, block_size=bs)
    return out


def masses_from_block_lse(buf: torch.Tensor, valid: torch.Tensor | None, stride_vb: int,
                          out: torch.Tensor, *, h0: int, n_heads: int, seq_len: int,
                          block_size: int) -> None:
    """Second step of the one-pass scoring: block logsumexps -> masses, written into ``out``.

    Args:
        buf: float32 scratch holding ``b[r, j]`` as (B, n_heads, N, L) (flat is fine).
        valid: (B, L) int8 key mask or None; ``stride_vb`` its batch stride.
        out: (B, H, N, N) float32; heads ``h0 .. h0 + n_heads`` are written.
    """
    B, H, N, _ = out.shape
    _mass_from_block_lse_kernel[(N, B * n_heads)](
        buf, out if valid is None else valid, out,
        stride_vb,
        H, n_heads, h0, seq_len, N,
        HAS_VALID=valid is not None, BS=block_size, JB=32,
        num_warps=4, num_stages=2,
    )


def _block_mass_twopass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two passes over the keys per query block (no scratch); see the module docstring."""
    q, k, valid, stride_vb, out = _launch_inputs(q, k, block_size, key_mask)
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    bs = block_size
    N = out.shape[-1]
    dp = padded_head_dim(D)
    _block_mass_kernel[(N, B * H)](
        q, k, valid, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        stride_vb,
        H, H // Hkv, L, N, math.log2(math.e) / math.sqrt(D),
        HEAD_DIM=D, HAS_VALID=key_mask is not None, BS=bs, DP=dp,
        num_warps=8 if bs >= 128 else 4, num_stages=2,
    )
    return out


def _launch_inputs(
    q: torch.Tensor, k: torch.Tensor, block_size: int, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """What both launchers pass: q and k with a contiguous last dim, the int8 key mask and its
    batch stride (q as an unused pointer without a mask), and the (B, H, N, N) float32 output."""
    B, H, L, _ = q.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    N = n_blocks(L, block_size)
    check_offsets(L, q, k, extra=N * L)
    out = torch.empty(B, H, N, N, device=q.device, dtype=torch.float32)
    if key_mask is None:
        return q, k, q, 0, out
    valid = key_mask.to(torch.int8).contiguous()
    return q, k, valid, valid.stride(0), out
