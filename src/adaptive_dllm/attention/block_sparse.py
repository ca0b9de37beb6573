"""Triton block-sparse attention: the ``"triton"`` backend, and the tile step it shares.

Shape legend:
    B batch, H query heads, Hkv KV heads, G = H // Hkv, U plan units, L length, D head dim,
    bs block size (= key tile = query rows per program), N = ceil(L / bs), kmax = most kept
    blocks in a row.

Each program owns one query block of one query head and runs the online softmax of
flash attention (Dao et al. 2022, Alg. 1, in base 2) over the key blocks its plan row keeps,
read straight from the plan's ``indices`` (no BlockMask, no compilation by inductor). Two choices
make it faster than the compiled FlexAttention kernel on an H100 (``benchmarks/README.md``):

- **GQA-grouped launch order.** Program ids run over (query head within the KV group) fastest,
  then query block, then KV head. With per-KV-head plans (``gqa="kv"``) the G programs that the
  GPU starts together read the same K/V blocks, so all but the first read them from L2.
- Masks only where needed: loads are masked along the key axis only (they still vectorise along
  the head dim), only the last kept block of a row is length-masked, and key validity is applied
  only when a key mask is passed.

The tile step (:func:`softmax_tile`) is also the body of the fused build kernel
(:mod:`adaptive_dllm.sparsity.fused_build`), which stores each tile's block logsumexp on the way.
float32 inputs run with fewer pipeline stages (shared memory) and, on the GPU, with Triton's
default TF32 tensor-core products (about 1e-3 relative error in the scores); bf16 and fp16 are the
intended inputs. Lengths and the strides that follow them (key-mask rows, plan indices) are runtime arguments
(``do_not_specialize``): a new prompt length does not recompile. Offsets inside one (batch, head)
slice are 32-bit, which :func:`check_offsets` guards (about 175k tokens for packed q/k/v).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from adaptive_dllm.attention.api import check_plan_fits
from adaptive_dllm.errors import AdllmError

#: Block sizes the kernel runs (the block is the tile: smaller blocks are slower).
BLOCK_SIZES = (16, 32, 64, 128)
#: Largest head dim the kernels take (the (block, head dim) tiles must fit shared memory).
MAX_HEAD_DIM = 128
#: Pipeline stages that fit Hopper's 227 KiB of shared memory with 4-byte (float32) tiles at head
#: dim 128 (checked by compiling for sm_90: 1 stage at block 128 takes 192 KiB, 2 take 320 KiB).
FP32_MAX_STAGES = {128: 1, 64: 2, 32: 3, 16: 3}
#: TMA loads of K and V: None = where the GPU and the tensors allow it (:func:`_use_tma`).
USE_TMA: bool | None = None
#: Launch options per block size (the block is the tile); 128 was tuned on an H100 at 64k.
KERNEL_OPTIONS: dict[int, dict[str, int]] = {
    128: {"num_warps": 8, "num_stages": 3},
    64: {"num_warps": 4, "num_stages": 3},
    32: {"num_warps": 4, "num_stages": 3},
    16: {"num_warps": 4, "num_stages": 2},
}


def launch_options(block_size: int, dtype: torch.dtype) -> dict[str, int]:
    """:data:`KERNEL_OPTIONS` for ``block_size``, with fewer stages for float32 tiles."""
    opts = dict(KERNEL_OPTIONS[block_size])
    if dtype.itemsize > 2:
        opts["num_stages"] = min(opts["num_stages"], FP32_MAX_STAGES[block_size])
    return opts


def check_offsets(seq_len: int, *tensors: torch.Tensor, extra: int = 0) -> None:
    """One-line error when 32-bit in-kernel offsets could overflow: a row offset times a tensor's
    row stride (dim 2), or ``extra`` (e.g. N * L of a block-logsumexp scratch), reaches 2^31."""
    worst = max([seq_len * t.stride(2) + t.shape[-1] for t in tensors] + [extra])
    if worst >= 2**31:
        raise AdllmError(f"sequence of {seq_len} tokens is too long for the 32-bit offsets of the "
                         f"Triton kernels (offset {worst} >= 2^31); use backend 'flex' or shorter "
                         f"inputs")


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
    """Pointers of a (rows, D) tile of a (B, H, L, D) tensor: rows ``offs_m`` of head h."""
    return base + b * stride_b + h * stride_h + offs_m[:, None] * stride_l + offs_d[None, :]


@triton.jit
def load_q_rows(Q, b, h, row0, L, stride_b, stride_h, stride_l, HEAD_DIM: tl.constexpr,
                BM: tl.constexpr, D: tl.constexpr):
    """The (BM, D) query tile from row ``row0`` of head h (zeros past L and past HEAD_DIM), with
    its row offsets, head-dim offsets and the masks of both."""
    offs_m = row0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
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
    """K^T (D, BS) and V (BS, D) of key block j through pointers, and which of its keys are
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
def softmax_tile(acc, m_i, l_i, q, kt, v, col_ok, qk_scale, MASK_COLS: tl.constexpr):
    """One key tile of the online softmax (Dao et al. 2022, Alg. 1, in base 2).

    Scores ``s = q kt * qk_scale`` (qk_scale = log2(e) / sqrt(D)), running max ``m``, running
    sum ``l``, accumulator ``acc`` (BM, D) float32. Also returns the tile's ``m_safe`` and row
    sums ``t = sum exp2(s - m_safe)``: ``m_safe + log2(t)`` is the row's block logsumexp.
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


@triton.jit
def _sparse_tile(acc, m_i, l_i, q, j, b, hk, K, V, k_base, v_base, valid_base, offs_d, d_ok, L,
                 stride_kl, stride_vl, qk_scale, USE_TMA: tl.constexpr,
                 HAS_VALID: tl.constexpr, PARTIAL: tl.constexpr, PAD_D: tl.constexpr,
                 BS: tl.constexpr, D: tl.constexpr):
    if USE_TMA:
        # K, V are (B, Hkv, L, HEAD_DIM) tensor descriptors: rows past L and columns past
        # HEAD_DIM arrive as zeros.
        b32, hk32, row = b.to(tl.int32), hk.to(tl.int32), (j * BS).to(tl.int32)
        kt = K.load([b32, hk32, row, 0]).reshape([BS, D]).T
        v = V.load([b32, hk32, row, 0]).reshape([BS, D])
        in_len_n = j * BS + tl.arange(0, BS) < L
    else:
        kt, v, in_len_n = load_kv_tile(j, k_base, v_base, offs_d, d_ok, L, stride_kl, stride_vl,
                                       PARTIAL, PAD_D, BS)
    col_ok = valid_keys(valid_base, j, in_len_n, HAS_VALID, BS)
    acc, m_i, l_i, _, _ = softmax_tile(acc, m_i, l_i, q, kt, v, col_ok, qk_scale,
                                       HAS_VALID or PARTIAL)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["L", "N", "stride_mb", "stride_ib", "stride_iu", "stride_in"])
def _sparse_attention_kernel(
    Q, K, V, VALID, IDX, CNT, OUT,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_mb, stride_ib, stride_iu, stride_in,
    G, GP, L, N, qk_scale,
    HEAD_DIM: tl.constexpr,
    HAS_VALID: tl.constexpr,
    USE_TMA: tl.constexpr,
    BS: tl.constexpr,
    D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = pid % G  # query head within its KV group: fastest, see the module docstring
    i = (pid // G) % N
    hk = (pid // G // N).to(tl.int64)
    h = hk * G + g
    u = h // GP
    q, offs_m, offs_d, d_ok, in_len_m = load_q_rows(Q, b, h, i * BS, L, stride_qb, stride_qh,
                                                    stride_ql, HEAD_DIM, BS, D)
    k_base = K
    v_base = V
    if not USE_TMA:
        k_base = K + b * stride_kb + hk * stride_kh
        v_base = V + b * stride_vb + hk * stride_vh
    valid_base = VALID + b * stride_mb
    idx_base = IDX + b * stride_ib + u * stride_iu + i * stride_in
    m_i = tl.full([BS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BS], dtype=tl.float32)
    acc = tl.zeros([BS, D], dtype=tl.float32)
    cnt = tl.load(CNT + u)  # >= 1: every row keeps its own block
    # Indices ascend, so only the last kept block can be partial (block N - 1): the others run
    # without length masks. The next index is loaded one tile ahead, so a tile's K/V addresses
    # are known when it starts and its loads can be issued early.
    j = tl.load(idx_base)
    for t in range(0, cnt - 1):
        j_next = tl.load(idx_base + t + 1)
        acc, m_i, l_i = _sparse_tile(acc, m_i, l_i, q, j, b, hk, K, V, k_base, v_base,
                                     valid_base, offs_d, d_ok, L, stride_kl, stride_vl, qk_scale,
                                     USE_TMA, HAS_VALID, False, HEAD_DIM != D, BS, D)
        j = j_next
    acc, m_i, l_i = _sparse_tile(acc, m_i, l_i, q, j, b, hk, K, V, k_base, v_base, valid_base,
                                 offs_d, d_ok, L, stride_kl, stride_vl, qk_scale,
                                 USE_TMA, HAS_VALID, True, HEAD_DIM != D, BS, D)
    store_normalised(OUT, acc, l_i, b, h, offs_m, offs_d, in_len_m, d_ok,
                     stride_ob, stride_oh, stride_ol)


def prepare_plan(plan: Any) -> torch.Tensor:
    """The plan's per-unit counts as an int32 device tensor, made once and cached in the plan
    (call it when the plan is built, so that sparse steps copy nothing to the device)."""
    counts = plan.cache.get("device_counts")
    if counts is None:
        if int(plan.counts.min()) < 1:  # a CPU tensor: no device sync
            raise AdllmError(f"plan of layer {plan.layer} keeps no block for some unit "
                             f"(counts {plan.counts.tolist()}); every row must keep >= 1 block")
        counts = plan.counts.to(device=plan.indices.device, dtype=torch.int32)
        plan.cache["device_counts"] = counts
    return counts


def triton_attention_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    plan: Any = None,
) -> torch.Tensor:
    """Block-sparse attention following ``plan`` (the ``"triton"`` backend of ``attend``).

    Computes, for query block i of head h, ``softmax(q k^T / sqrt(D)) v`` over the keys of the
    blocks kept in row i by h's unit (padded keys get no weight).

    Args:
        q: (B, H, L, D) on a CUDA device (or Triton's interpreter); k, v: (B, Hkv, L, D).
        key_mask: (B, L) bool, True = real token.
        plan: the layer's SparsePlan (required), built for length L and batch 1 or B.

    Returns:
        (B, H, L, D) in q's dtype, contiguous.
    """
    check_plan_fits(plan, q, "triton")
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    if plan.block_size not in BLOCK_SIZES:
        raise AdllmError(f"block_size={plan.block_size} is not supported by the 'triton' "
                         f"backend; use one of {', '.join(map(str, BLOCK_SIZES))}")
    if plan.n_heads != H or H % Hkv:
        raise AdllmError(f"plan for {plan.n_heads} query heads cannot run q/k of {H} query and "
                         f"{Hkv} KV heads; build the plan from this layer's q/k")
    if D > MAX_HEAD_DIM:
        raise AdllmError(f"head dim {D} is larger than the {MAX_HEAD_DIM} the 'triton' backend "
                         f"takes; use backend 'flex'")
    check_offsets(L, q, k, v)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    idx = plan.indices
    counts = prepare_plan(plan)
    out = torch.empty(B, H, L, D, device=q.device, dtype=q.dtype)
    valid = None if key_mask is None else key_mask.to(torch.int8).contiguous()
    bs = plan.block_size
    N = plan.n_blocks
    dp = max(16, triton.next_power_of_2(D))
    use_tma = _use_tma(q, k, v) if USE_TMA is None else USE_TMA
    kk, vv = k, v
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        kk, vv = (TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, bs, dp])
                  for t in (k, v))
    _sparse_attention_kernel[(H * N, B)](
        q, kk, vv, q if valid is None else valid, idx, counts, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        0 if valid is None else valid.stride(0),
        0 if plan.batch == 1 else idx.stride(0), idx.stride(1), idx.stride(2),
        H // Hkv, plan.group, L, N, math.log2(math.e) / math.sqrt(D),
        HEAD_DIM=D, HAS_VALID=valid is not None, USE_TMA=use_tma, BS=bs, D=dp,
        **launch_options(bs, q.dtype),
    )
    return out


def _use_tma(*tensors: torch.Tensor) -> bool:
    """Tensor-memory-accelerator loads: on GPUs of compute capability 9 or newer, for tensors
    whose base and strides are 16-byte aligned (what a TMA descriptor requires)."""
    t0 = tensors[0]
    if not t0.is_cuda or torch.cuda.get_device_capability(t0.device)[0] < 9:
        return False
    return all(t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0
                                               for st in t.stride()[:-1]) for t in tensors[1:])
