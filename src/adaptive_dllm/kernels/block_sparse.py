"""Triton block-sparse flash attention over a plan's kept key blocks (the prefill regime).

Shape legend:
    B batch, H query heads, Hkv KV heads, G = H // Hkv, U plan units (GP query heads each),
    L length, HEAD_DIM head dim, DP padded head dim, bs block size (= key tile = query rows per
    program), N = ceil(L / bs), kmax = most kept blocks in a row.

Each program owns one query block of one query head and runs the online softmax of
flash attention (Dao et al. 2022, Alg. 1, in base 2) over the key blocks its plan row keeps,
read straight from the plan's ``indices`` (no BlockMask, no compilation by inductor). Two choices
make it faster than the compiled FlexAttention kernel (measurements: ``benchmarks/README.md``):

- **GQA-grouped launch order.** Program ids run over (query head within the KV group) fastest,
  then query block, then KV head. With per-KV-head plans (``gqa="kv"``) the G programs that the
  GPU starts together read the same K/V blocks, so all but the first read them from L2.
- Masks only where needed: loads are masked along the key axis only (they still vectorise along
  the head dim), only the last kept block of a row is length-masked, and key validity is applied
  only when a key mask is passed.

float32 inputs run with fewer pipeline stages (shared memory) and, on the GPU, with Triton's
default TF32 tensor-core products (about 1e-3 relative error in the scores); bf16 and fp16 are the
intended inputs. Lengths and the strides that follow them (key-mask rows, plan indices) are
runtime arguments (``do_not_specialize``): a new prompt length does not recompile. Offsets inside
one (batch, head) slice are 32-bit, which :func:`~adaptive_dllm.kernels.support.check_offsets`
guards (about 175k tokens for packed q/k/v).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from adaptive_dllm.kernels.support import LaunchOptions, check_offsets, padded_head_dim
from adaptive_dllm.kernels.tiles import (
    load_kv_tile,
    load_q_rows,
    softmax_tile,
    store_normalised,
    valid_keys,
)


@triton.jit
def _sparse_tile(acc, m_i, l_i, q, j, b, hk, K, V, k_base, v_base, valid_base, offs_d, d_ok, L,
                 stride_kl, stride_vl, qk_scale, USE_TMA: tl.constexpr,
                 HAS_VALID: tl.constexpr, PARTIAL: tl.constexpr, PAD_D: tl.constexpr,
                 BS: tl.constexpr, DP: tl.constexpr):
    if USE_TMA:
        # K, V are (B, Hkv, L, HEAD_DIM) tensor descriptors: rows past L and columns past
        # HEAD_DIM arrive as zeros.
        b32, hk32, row = b.to(tl.int32), hk.to(tl.int32), (j * BS).to(tl.int32)
        kt = K.load([b32, hk32, row, 0]).reshape([BS, DP]).T
        v = V.load([b32, hk32, row, 0]).reshape([BS, DP])
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
    DP: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = pid % G  # query head within its KV group: fastest, see the module docstring
    i = (pid // G) % N
    hk = (pid // G // N).to(tl.int64)
    h = hk * G + g
    u = h // GP
    q, offs_m, offs_d, d_ok, in_len_m = load_q_rows(Q, b, h, i * BS, L, stride_qb, stride_qh,
                                                    stride_ql, HEAD_DIM, BS, DP)
    k_base = K
    v_base = V
    if not USE_TMA:
        k_base = K + b * stride_kb + hk * stride_kh
        v_base = V + b * stride_vb + hk * stride_vh
    valid_base = VALID + b * stride_mb
    idx_base = IDX + b * stride_ib + u * stride_iu + i * stride_in
    m_i = tl.full([BS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BS], dtype=tl.float32)
    acc = tl.zeros([BS, DP], dtype=tl.float32)
    cnt = tl.load(CNT + u)  # >= 1: every row keeps its own block
    # Indices ascend, so only the last kept block can be partial (block N - 1): the others run
    # without length masks. The next index is loaded one tile ahead, so a tile's K/V addresses
    # are known when it starts and its loads can be issued early.
    j = tl.load(idx_base)
    for t in range(0, cnt - 1):
        j_next = tl.load(idx_base + t + 1)
        acc, m_i, l_i = _sparse_tile(acc, m_i, l_i, q, j, b, hk, K, V, k_base, v_base,
                                     valid_base, offs_d, d_ok, L, stride_kl, stride_vl, qk_scale,
                                     USE_TMA, HAS_VALID, False, HEAD_DIM != DP, BS, DP)
        j = j_next
    acc, m_i, l_i = _sparse_tile(acc, m_i, l_i, q, j, b, hk, K, V, k_base, v_base, valid_base,
                                 offs_d, d_ok, L, stride_kl, stride_vl, qk_scale,
                                 USE_TMA, HAS_VALID, True, HEAD_DIM != DP, BS, DP)
    store_normalised(OUT, acc, l_i, b, h, offs_m, offs_d, in_len_m, d_ok,
                     stride_ob, stride_oh, stride_ol)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    *,
    block_size: int,
    group: int,
    key_mask: torch.Tensor | None,
    launch: LaunchOptions,
    use_tma: bool,
) -> torch.Tensor:
    """Launch the kernel: query block i of head h attends to the key blocks kept in row i by
    h's unit (``h // group``); callers check shapes, block size and head dim first.

    Args:
        q: (B, H, L, HEAD_DIM); k, v: (B, Hkv, L, HEAD_DIM), last dim contiguous.
        indices: (1 or B, U, N, kmax) int32 kept blocks per row, ascending, padded with -1.
        counts: (U,) int32 on q's device, kept blocks per row of each unit (>= 1).
        block_size: bs; group: query heads per plan unit.
        key_mask: (B, L) bool, True = real token, or None.
        launch: warps and stages at this block size (stages cut for float32 tiles).
        use_tma: load K and V through tensor descriptors (Hopper; see ``tma_usable``).

    Returns:
        (B, H, L, HEAD_DIM) in q's dtype, contiguous.
    """
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    check_offsets(L, q, k, v)
    out = torch.empty(B, H, L, D, device=q.device, dtype=q.dtype)
    valid = None if key_mask is None else key_mask.to(torch.int8).contiguous()
    bs = block_size
    N = -(-L // bs)
    dp = padded_head_dim(D)
    kk, vv = k, v
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        kk, vv = (TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, bs, dp])
                  for t in (k, v))
    _sparse_attention_kernel[(H * N, B)](
        q, kk, vv, q if valid is None else valid, indices, counts, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        0 if valid is None else valid.stride(0),
        0 if indices.shape[0] == 1 else indices.stride(0), indices.stride(1), indices.stride(2),
        H // Hkv, group, L, N, math.log2(math.e) / math.sqrt(D),
        HEAD_DIM=D, HAS_VALID=valid is not None, USE_TMA=use_tma, BS=bs, DP=dp,
        **launch.for_dtype(bs, q.dtype.itemsize),
    )
    return out


def tma_usable(*tensors: torch.Tensor) -> bool:
    """Tensor-memory-accelerator loads: on GPUs of compute capability 9 or newer, for tensors
    whose base and strides are 16-byte aligned (what a TMA descriptor requires)."""
    t0 = tensors[0]
    if not t0.is_cuda or torch.cuda.get_device_capability(t0.device)[0] < 9:
        return False
    return all(t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0
                                               for st in t.stride()[:-1]) for t in tensors[1:])
