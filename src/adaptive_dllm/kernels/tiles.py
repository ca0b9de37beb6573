"""Shared ``@triton.jit`` steps of the attention and scoring kernels: tile loads, row pointers,
the key-tile score, the online-softmax step and the normalised store.

Shape legend: BM query rows of a tile, BS key block (= key tile), HEAD_DIM the real head dim,
DP the padded head dim (the power of two >= max(16, HEAD_DIM) a tile spans; columns past
HEAD_DIM load as zeros), L sequence length.

Every kernel of this package builds on these steps, so each is written once: the block-sparse
attention kernel (:mod:`~adaptive_dllm.kernels.block_sparse`), the fused build kernel
(:mod:`~adaptive_dllm.kernels.attend_and_score`) and the block-mass kernels
(:mod:`~adaptive_dllm.kernels.block_mass`). Scores are in base 2: ``s = q . k * qk_scale`` with
``qk_scale = log2(e) / sqrt(HEAD_DIM)``, exponentials are ``exp2`` (Dao et al. 2022, Alg. 1).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_tile(ptrs, row_ok, col_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """``tl.load`` of a 2-D tile, masked only along the axes that can be partial: a mask that
    varies along the contiguous axis (e.g. a head-dim mask that is always true) would stop the
    load from vectorising."""
    if MASK_ROWS and MASK_COLS:
        x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    elif MASK_ROWS:
        x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    elif MASK_COLS:
        x = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def rows_ptrs(base, b, h, offs_m, offs_d, stride_b, stride_h, stride_l):
    """Pointers of a (rows, DP) tile of a (B, H, L, HEAD_DIM) tensor: rows ``offs_m`` of head h."""
    return base + b * stride_b + h * stride_h + offs_m[:, None] * stride_l + offs_d[None, :]


@triton.jit
def load_q_rows(Q, b, h, row0, L, stride_b, stride_h, stride_l, HEAD_DIM: tl.constexpr,
                BM: tl.constexpr, DP: tl.constexpr):
    """The (BM, DP) query tile from row ``row0`` of head h (zeros past L and past HEAD_DIM), with
    its row offsets, head-dim offsets and the masks of both."""
    offs_m = row0 + tl.arange(0, BM)
    offs_d = tl.arange(0, DP)
    d_ok = offs_d < HEAD_DIM
    in_len_m = offs_m < L
    q = tl.load(rows_ptrs(Q, b, h, offs_m, offs_d, stride_b, stride_h, stride_l),
                mask=in_len_m[:, None] & d_ok[None, :], other=0.0)
    return q, offs_m, offs_d, d_ok, in_len_m


@triton.jit
def store_normalised(OUT, acc, l_i, b, h, offs_m, offs_d, in_len_m, d_ok,
                     stride_ob, stride_oh, stride_ol):
    """``acc / l`` into OUT's rows (Dao et al. 2022, Alg. 1, last line); a row without any
    valid key has no attention distribution and gets 0, not NaN."""
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(rows_ptrs(OUT, b, h, offs_m, offs_d, stride_ob, stride_oh, stride_ol),
             out.to(OUT.dtype.element_ty), mask=in_len_m[:, None] & d_ok[None, :])


@triton.jit
def load_kv_tile(j, k_base, v_base, offs_d, d_ok, L, stride_kl, stride_vl,
                 PARTIAL: tl.constexpr, PAD_D: tl.constexpr, BS: tl.constexpr):
    """K^T (DP, BS) and V (BS, DP) of key block j through pointers, and which of its keys are
    inside the sequence."""
    offs_n = j * BS + tl.arange(0, BS)
    in_len_n = offs_n < L
    kt = load_tile(k_base + offs_n[None, :] * stride_kl + offs_d[:, None], d_ok, in_len_n,
                   PAD_D, PARTIAL)
    v = load_tile(v_base + offs_n[:, None] * stride_vl + offs_d[None, :], in_len_n, d_ok,
                  PARTIAL, PAD_D)
    return kt, v, in_len_n


@triton.jit
def valid_keys(valid_base, j, in_len_n, HAS_VALID: tl.constexpr, BS: tl.constexpr):
    """Keys of block j that are inside the sequence and, with a key mask, real tokens."""
    ok = in_len_n
    if HAS_VALID:
        ok = ok & (tl.load(valid_base + j * BS + tl.arange(0, BS), mask=in_len_n, other=0) != 0)
    return ok


@triton.jit
def score_tile(q, j, k_base, valid_base, offs_d, d_ok, L, stride_kl, qk_scale,
               HAS_VALID: tl.constexpr, PAD_D: tl.constexpr, BS: tl.constexpr):
    """Base-2 scores (BM, BS) of the query tile against key block j, ``-inf`` at keys outside
    the sequence or masked out: the key-tile step of the block-mass kernels."""
    offs_n = j * BS + tl.arange(0, BS)
    in_len_n = offs_n < L
    col_ok = valid_keys(valid_base, j, in_len_n, HAS_VALID, BS)
    kt = load_tile(k_base + offs_n[None, :] * stride_kl + offs_d[:, None], d_ok, in_len_n,
                   PAD_D, True)  # (DP, BS)
    s = tl.dot(q, kt) * qk_scale
    return tl.where(col_ok[None, :], s, float("-inf"))


@triton.jit
def softmax_tile(acc, m_i, l_i, q, kt, v, col_ok, qk_scale, MASK_COLS: tl.constexpr):
    """One key tile of the online softmax (Dao et al. 2022, Alg. 1, in base 2).

    Scores ``s = q kt * qk_scale``, running max ``m``, running sum ``l``, accumulator ``acc``
    (BM, DP) float32. Also returns the tile's ``m_safe`` and row sums ``t = sum exp2(s -
    m_safe)``: ``m_safe + log2(t)`` is the row's block logsumexp.
    """
    s = tl.dot(q, kt)
    if MASK_COLS:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no valid key yet
    p = tl.exp2(s * qk_scale - m_safe[:, None])
    t = tl.sum(p, 1)
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + t
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i, m_safe, t
