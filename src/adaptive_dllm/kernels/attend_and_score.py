"""Triton kernel: dense attention that also scores key blocks, for the plan-build step.

Shape legend: B batch, H query heads, Hkv KV heads, G = H // Hkv, L length, D head dim,
DP padded head dim (kernel tiles), bs block size, N = ceil(L / bs), Hc heads per chunk,
BM query rows per program.

The build step of the SparseD schedule runs dense attention *and* needs the exact block mass of
the same q/k (:mod:`~adaptive_dllm.attention.mass`). Run separately, the scoring pass repeats the
most expensive part of attention: ``Q K^T`` and one ``exp`` per score. A flash-attention forward
(Dao et al. 2022, Alg. 1) already computes, for every query row ``r`` and key tile ``j``,

    m_rj = max(m_r(j-1), max_{c in j} s_rc),   t_rj = sum_{c in j} exp2(s_rc - m_rj)

(base 2, ``s = q . k * log2(e) / sqrt(D)``). The row's *block* logsumexp is then one ``log2``
away: ``b[r, j] = m_rj + log2(t_rj) = log2 sum_{c in j} exp2(s_rc)``, exactly the quantity the
one-pass scoring kernel stores (:func:`~adaptive_dllm.kernels.block_mass.block_mass_triton`).
So :func:`attend_and_score` runs one attention forward whose key tiles are the selection blocks,
stores ``b`` beside the output, and turns ``b`` into masses with the scoring module's second
kernel (``M[i, j] = sum_{r in i} exp2(b[r, j] - lse_r)``). The extra work over attention is one
``log2`` per row and tile plus that small second kernel.

``t_rj`` underflows to 0 only when the block's scores are more than ~126 (base 2) below the running
maximum, i.e. when its mass is below 2^-126 of the row's: what is lost is far below float32
rounding of the masses.

K and V are never repeated (query head h reads KV head ``h // G``). Lengths are runtime arguments
(``do_not_specialize``): a new prompt length does not recompile.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.block_mass import SCRATCH_BYTES, masses_from_block_lse
from adaptive_dllm.kernels.support import (
    BLOCK_SIZES,
    LaunchOptions,
    check_block_size,
    check_head_dim,
    check_offsets,
    n_blocks,
    padded_head_dim,
)
from adaptive_dllm.kernels.tiles import (
    load_kv_tile,
    load_q_rows,
    softmax_tile,
    store_normalised,
    valid_keys,
)

#: Query rows per program (one flash-attention tile).
BLOCK_M = 128
#: Launch options (every block size; float32 tiles get fewer stages), tuned on an H100 at 64k.
LAUNCH = LaunchOptions(num_warps=8, num_stages=3)


@triton.jit
def _scored_tile(acc, m_i, l_i, q, j, k_base, v_base, valid_base, buf_base, offs_m, in_len_m,
                 offs_d, d_ok, L, stride_kl, stride_vl, qk_scale,
                 HAS_VALID: tl.constexpr, PARTIAL: tl.constexpr, PAD_D: tl.constexpr,
                 BS: tl.constexpr):
    """Attention tile j, then the rows' block logsumexp ``b[r, j]`` stored at ``j * L + r``."""
    kt, v, in_len_n = load_kv_tile(j, k_base, v_base, offs_d, d_ok, L, stride_kl, stride_vl,
                                   PARTIAL, PAD_D, BS)
    col_ok = valid_keys(valid_base, j, in_len_n, HAS_VALID, BS)
    acc, m_i, l_i, m_safe, t = softmax_tile(acc, m_i, l_i, q, kt, v, col_ok, qk_scale,
                                            HAS_VALID or PARTIAL)
    tl.store(buf_base + j * L + offs_m, tl.where(t > 0.0, m_safe + tl.log2(t), float("-inf")),
             mask=in_len_m)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["Hc", "h0", "L", "N", "stride_mb"])
def _attend_block_lse_kernel(
    Q, K, V, VALID, OUT, BUF,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_mb,
    Hc, h0, G, L, N, qk_scale,
    HEAD_DIM: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BM: tl.constexpr,
    BS: tl.constexpr,
    DP: tl.constexpr,
):
    # Strides are specialised (divisibility by 16) so that loads vectorise; they change with the
    # length only in that property, so a new prompt length still reuses the compiled kernel.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hc).to(tl.int64)
    h = (bh % Hc + h0).to(tl.int64)
    hk = h // G
    q, offs_m, offs_d, d_ok, in_len_m = load_q_rows(Q, b, h, pid_m * BM, L, stride_qb,
                                                    stride_qh, stride_ql, HEAD_DIM, BM, DP)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    valid_base = VALID + b * stride_mb
    buf_base = BUF + bh.to(tl.int64) * N * L

    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, DP], dtype=tl.float32)
    n_full = L // BS
    for j in range(0, n_full):
        acc, m_i, l_i = _scored_tile(acc, m_i, l_i, q, j, k_base, v_base, valid_base, buf_base,
                                     offs_m, in_len_m, offs_d, d_ok, L, stride_kl, stride_vl,
                                     qk_scale, HAS_VALID, False, HEAD_DIM != DP, BS)
    if n_full < N:
        acc, m_i, l_i = _scored_tile(acc, m_i, l_i, q, n_full, k_base, v_base, valid_base,
                                     buf_base, offs_m, in_len_m, offs_d, d_ok, L, stride_kl,
                                     stride_vl, qk_scale, HAS_VALID, True, HEAD_DIM != DP, BS)
    store_normalised(OUT, acc, l_i, b, h, offs_m, offs_d, in_len_m, d_ok,
                     stride_ob, stride_oh, stride_ol)


def fused_num_stages(block_size: int, dtype: torch.dtype) -> int:
    """Pipeline stages of the fused kernel: 3, fewer for float32 tiles (shared memory)."""
    return LAUNCH.for_dtype(block_size, dtype.itemsize)["num_stages"]


def attend_and_score(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int,
    key_mask: torch.Tensor | None = None,
    scratch_bytes: int = SCRATCH_BYTES,
    block_m: int = BLOCK_M,
    num_warps: int = LAUNCH.num_warps,
    num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense bidirectional attention and the exact block mass of the same q/k, in one pass.

    Computes ``softmax(q k^T / sqrt(D)) v`` (Vaswani et al. 2017, Eq. 1; padded keys get no
    weight) and ``M[b, h, i, j]``, the mass of key block j summed over the rows of query block i
    (as :func:`~adaptive_dllm.attention.mass.block_mass_torch`; padded rows contribute none).

    Args:
        q: (B, H, L, D) queries, fp16/bf16/fp32, on a CUDA device (or Triton's interpreter).
        k, v: (B, Hkv, L, D).
        block_size: bs, a power of two in [16, 128]: the key tile of the attention loop.
        key_mask: (B, L) bool, True = real token.
        scratch_bytes: Size the block-logsumexp scratch should stay within: heads are done in
            chunks of that size, but at least one head at a time (B * N * L * 4 bytes).
        block_m, num_warps, num_stages: Kernel tiling (query rows per program, a power of two
            >= 16) and launch options; the defaults were tuned on an H100 at 64k tokens
            (``benchmarks/README.md``; None stages: 3, or what fits shared memory for float32
            tiles).

    Returns:
        out (B, H, L, D) in q's dtype, contiguous; mass (B, H, N, N) float32.
    """
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    if k.shape != (B, Hkv, L, D) or v.shape != k.shape or H % Hkv:
        raise AdllmError(f"attend_and_score needs q (B, H, L, D) and k, v (B, Hkv, L, D) with "
                         f"H % Hkv == 0; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_block_size(block_size, supported=BLOCK_SIZES, who="the fused build kernel", hint="")
    check_head_dim(D, who="the fused build kernel", hint="use SparseConfig(build_kernel='separate')")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bs = block_size
    N = n_blocks(L, bs)
    check_offsets(L, q, k, v, extra=N * L)
    if num_stages is None:
        num_stages = fused_num_stages(bs, q.dtype)
    out = torch.empty(B, H, L, D, device=q.device, dtype=q.dtype)
    mass = torch.empty(B, H, N, N, device=q.device, dtype=torch.float32)
    valid = None if key_mask is None else key_mask.to(torch.int8).contiguous()
    stride_mb = 0 if valid is None else valid.stride(0)
    hc = max(1, min(H, scratch_bytes // max(1, B * N * L * 4)))
    buf = torch.empty(B * hc * N * L, device=q.device, dtype=torch.float32)
    for h0 in range(0, H, hc):
        n_h = min(hc, H - h0)
        _attend_block_lse_kernel[(-(-L // block_m), B * n_h)](
            q, k, v, q if valid is None else valid, out, buf,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            stride_mb,
            n_h, h0, H // Hkv, L, N, math.log2(math.e) / math.sqrt(D),
            HEAD_DIM=D, HAS_VALID=valid is not None, BM=block_m, BS=bs,
            DP=padded_head_dim(D), num_warps=num_warps, num_stages=num_stages,
        )
        masses_from_block_lse(buf, valid, stride_mb, mass, h0=h0, n_heads=n_h, seq_len=L,
                              block_size=bs)
    return out, mass
