"""Cached-step attention: a few queries over a long K/V cache, kept key blocks only.

Shape legend:
    B batch, H query heads, Hkv key/value heads, G = H // Hkv, W queries (the cached step's
    window), Lk keys (the whole cache), D head dim, bs key block size, Nk = ceil(Lk / bs),
    kmax kept blocks (padded), S splits, M = G * W query rows of one KV head.

A cached step of the approximate K/V cache recomputes a window of a few dozen positions whose
queries read up to 64k cached keys: the work is memory-bound, so the kernel's job is to read each
kept K/V block once. Every (batch, KV head) has one list of kept key blocks (``indices``,
ascending, padded with -1; ``counts`` valid entries), shared by all its G query heads and all W
queries: the G * W query rows of a KV head form one tile, so K/V are loaded once per group
(GQA-native, never repeated). The kept blocks are split over S programs per KV head, each
producing a partial output with its running max and sum (flash-decoding, Dao et al. 2023); a
second Triton kernel merges the S partials of each query row with their log-sum-exps and writes
the result in q's dtype (:func:`combine_splits` is its eager oracle). Two launches per call (a
third with a key mask: its int8 copy): a cached step is tens of microseconds of GPU work, so
the launch path matters.

:func:`decode_reference` is the eager oracle (gather the kept blocks, masked softmax) that the
kernel is tested against, itself tested against dense softmax attention with every block kept.

Imports nothing of the package but its errors and the kernels' launch options; Triton is
imported on first use.
"""

from __future__ import annotations

import functools
import math

import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import LaunchOptions

_MAX_ROWS = 128  # query rows per program; more rows get more programs along the grid's y axis
# Two stages of bf16 K/V tiles (2 x 2 x 32 KiB at block 128, head dim 128) plus the query tile fit
# Hopper's 227 KiB; float32 tiles get fewer stages (support.FP32_MAX_STAGES). Three stages of
# float32 tiles asked for 320 KiB and did not launch on an H200.
_LAUNCH = LaunchOptions(num_warps=4, num_stages=2)
_COMBINE_SPLITS = 16  # partials merged per iteration of the combine kernel


def decode_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                     counts: torch.Tensor, *, block_size: int,
                     key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q over the kept key blocks only, eagerly in float32.

    Args:
        q: (B, H, W, D); k, v: (B, Hkv, Lk, D).
        indices: (B, Hkv, kmax) int32/int64 kept key blocks, -1 padding after ``counts``.
        counts: (B, Hkv) valid entries of ``indices``.
        block_size: bs.
        key_mask: (B, Lk) bool, True = real key; None = all real.

    Returns:
        (B, H, W, D) in q's dtype; a row with no visible key gives zeros.
    """
    _check(q, k, v, indices, counts, block_size, key_mask)
    B, H, W, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = H // Hkv
    kmax = indices.shape[-1]
    slot = torch.arange(kmax, device=q.device)
    valid = slot[None, None, :] < counts[..., None].long()  # (B, Hkv, kmax)
    blocks = torch.where(valid, indices.long(), 0)
    pos = (blocks[..., None] * block_size + torch.arange(block_size, device=q.device))
    pos = pos.flatten(-2)  # (B, Hkv, kmax * bs) key positions, possibly past Lk
    ok = valid.repeat_interleave(block_size, dim=-1) & (pos < Lk)
    pos = pos.clamp_max(Lk - 1)
    if key_mask is not None:
        ok = ok & torch.gather(key_mask.bool()[:, None, :].expand(B, Hkv, Lk), 2, pos)
    idx = pos[..., None].expand(-1, -1, -1, D)
    kg = torch.gather(k.float(), 2, idx)  # (B, Hkv, kmax * bs, D)
    vg = torch.gather(v.float(), 2, idx)
    qf = q.float().reshape(B, Hkv, G * W, D)  # the group's query rows share one K/V gather
    scores = qf @ kg.transpose(-1, -2) / math.sqrt(D)  # (B, Hkv, M, kmax * bs)
    scores = scores.masked_fill(~ok[:, :, None, :], float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return (probs @ vg).view(B, H, W, D).to(q.dtype)


def decode_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                  counts: torch.Tensor, *, block_size: int, key_mask: torch.Tensor | None = None,
                  splits: int | None = None) -> torch.Tensor:
    """The Triton kernel: same contract as :func:`decode_reference` (float32 accumulation).

    Args:
        splits: S programs per KV head over its kept blocks; None picks enough to fill the GPU
            (about four programs per streaming multiprocessor), at most ``kmax``.

    Raises:
        AdllmError: bad shapes, a block size that is not a power of two >= 16, or no triton.
    """
    _check(q, k, v, indices, counts, block_size, key_mask)
    try:
        import triton
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise AdllmError("decode_sparse needs triton (pip install triton); use "
                         "decode_reference without it") from None
    if block_size < 16 or block_size & (block_size - 1):
        raise AdllmError(f"block_size={block_size} must be a power of two >= 16")
    if max(q.numel(), k.numel()) >= 2 ** 31:  # the kernel's offsets are 32-bit
        raise AdllmError(f"q {tuple(q.shape)} / k {tuple(k.shape)} exceed 2^31 elements; "
                         "split the batch")
    B, H, W, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G, kmax = H // Hkv, indices.shape[-1]
    M = G * W
    block_m = max(16, min(_MAX_ROWS, triton.next_power_of_2(M)))
    row_tiles = triton.cdiv(M, block_m)
    S = splits or _default_splits(q.device, B * Hkv * row_tiles, kmax)
    S = max(1, min(S, kmax))
    per_split = triton.cdiv(kmax, S)
    part = torch.empty(B, Hkv, S, M, D, dtype=torch.float32, device=q.device)
    stat = torch.empty(B, Hkv, S, M, 2, dtype=torch.float32, device=q.device)  # max, sum
    out = torch.empty(B, H, W, D, dtype=q.dtype, device=q.device)
    # Without a mask the kernel never reads its mask pointer: pass any tensor, launch nothing.
    mask = key_mask.to(torch.int8) if key_mask is not None else indices
    decode, combine = _kernels()
    decode[(B * Hkv, row_tiles, S)](
        q, k, v, indices.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous(), mask,
        part, stat, *q.stride(), *k.stride(), *v.stride(),
        Hkv, W, M, Lk, D, kmax, per_split, 1.0 / math.sqrt(D),
        HAS_MASK=key_mask is not None, BLOCK_M=block_m, BLOCK_N=block_size,
        BLOCK_D=max(16, triton.next_power_of_2(D)), **_LAUNCH.for_dtype(block_size, k.element_size()),
    )
    # out (B, H, W, D) contiguous is (B * Hkv * M, D) rows in the partials' row order (H = Hkv*G,
    # M = G*W), so the combine writes each row of the result once, in q's dtype.
    combine[(B * Hkv * M,)](part, stat, out, S, M, D, BLOCK_S=_COMBINE_SPLITS,
                            BLOCK_D=max(16, triton.next_power_of_2(D)))
    return out


def combine_splits(part: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
    """Merge S partial outputs (B, Hkv, S, M, D) with their (max, sum) (B, Hkv, S, M, 2) into
    (B, Hkv, M, D), eagerly: the oracle of the combine kernel. Weights exp(max_s - max) * sum_s,
    normalised. Splits that saw no key
    (max -inf, sum 0) weigh nothing; a row no split saw gives zeros."""
    m, s = stat[..., 0], stat[..., 1]  # (B, Hkv, S, M)
    top = m.amax(dim=2, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    w = torch.where(torch.isfinite(m), torch.exp(m - top), 0.0) * s  # (B, Hkv, S, M)
    total = w.sum(dim=2)  # (B, Hkv, M)
    out = (part * w[..., None]).sum(dim=2)
    return torch.where(total[..., None] > 0, out / total.clamp_min(1e-30)[..., None], 0.0)


def _default_splits(device: torch.device, programs: int, kmax: int) -> int:
    if device.type != "cuda":
        return min(kmax, 4)
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(kmax, -(-4 * sms // max(programs, 1))))


@functools.cache
def _sm_count(index: int) -> int:
    # Asked once per device: a cached step is a few dozen microseconds of GPU work, so every
    # host-side microsecond of its launch path shows.
    return torch.cuda.get_device_properties(index).multi_processor_count


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
           counts: torch.Tensor, block_size: int, key_mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise AdllmError(f"q must be (B, H, W, D) and k, v (B, Hkv, Lk, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, _, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or H % k.shape[1]:
        raise AdllmError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)}")
    Hkv, Lk = k.shape[1], k.shape[2]
    if indices.dim() != 3 or tuple(indices.shape[:2]) != (B, Hkv):
        raise AdllmError(f"indices must be (B, Hkv, kmax) = ({B}, {Hkv}, kmax); "
                         f"got {tuple(indices.shape)}")
    if tuple(counts.shape) != (B, Hkv):
        raise AdllmError(f"counts must be (B, Hkv) = ({B}, {Hkv}); got {tuple(counts.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise AdllmError(f"block_size={block_size!r} must be a positive integer")
    if key_mask is not None and tuple(key_mask.shape) != (B, Lk):
        raise AdllmError(f"key_mask must be (B, Lk) = ({B}, {Lk}); got {tuple(key_mask.shape)}")


def _kernels():  # noqa: ANN202 - triton JITFunctions
    """Build the decode and combine kernels on first use (importing this module needs no
    triton)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build_kernels()
    return _KERNELS


_KERNELS = None


def _build_kernels():  # noqa: ANN202, C901 - two jit functions
    import triton
    import triton.language as tl

    @triton.jit
    def decode_kernel(q, k, v, idx, cnt, mask, part, stat,
                      sqb, sqh, sqw, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
                      Hkv, W, M, Lk, D, kmax, per_split, scale,
                      HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr):
        # One program: KV head (b, h) of the grid's x axis, query rows [tile * BLOCK_M, ...)
        # of its G * W rows, kept blocks [split * per_split, ...) of its list.
        bh = tl.program_id(0)
        tile = tl.program_id(1)
        split = tl.program_id(2)
        b = bh // Hkv
        h = bh % Hkv
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < M
        d_ok = dims < D
        g = rows // W  # query head within the group
        w = rows % W
        q_ptr = q + b * sqb + (h * (M // W) + g)[:, None] * sqh + w[:, None] * sqw \
            + dims[None, :] * sqd
        # Tiles stay in the input dtype (bf16 on the GPU: tensor-core dots, half the shared
        # memory); the dots accumulate in float32, the softmax runs in float32.
        qt = tl.load(q_ptr, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        n_kept = tl.load(cnt + bh)
        first = split * per_split
        last = tl.minimum(first + per_split, n_kept)
        cols = tl.arange(0, BLOCK_N)
        for slot in range(first, last):
            block = tl.load(idx + bh * kmax + slot)
            pos = block * BLOCK_N + cols
            key_ok = pos < Lk
            if HAS_MASK:
                key_ok = key_ok & (tl.load(mask + b * Lk + pos, mask=key_ok, other=0) != 0)
            kt = tl.load(k + b * skb + h * skh + pos[:, None] * skl + dims[None, :] * skd,
                         mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            vt = tl.load(v + b * svb + h * svh + pos[:, None] * svl + dims[None, :] * svd,
                         mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            s = tl.dot(qt, tl.trans(kt)) * scale  # (BLOCK_M, BLOCK_N), float32
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # Rows that have seen no key yet keep a -inf max: shift by 0 there to avoid NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        base = (bh * tl.num_programs(2) + split) * M
        tl.store(part + (base + rows)[:, None] * D + dims[None, :], out,
                 mask=row_ok[:, None] & d_ok[None, :])
        tl.store(stat + (base + rows) * 2, m_i, mask=row_ok)
        tl.store(stat + (base + rows) * 2 + 1, l_i, mask=row_ok)

    @triton.jit
    def combine_kernel(part, stat, out, S, M, D, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program: one query row of one KV head; merges its S partials as combine_splits
        # does, BLOCK_S at a time with a running max (any S, bounded registers).
        row = tl.program_id(0)  # (b * Hkv + h) * M + r
        bh = row // M
        r = row % M
        dims = tl.arange(0, BLOCK_D)
        d_ok = dims < D
        m_run = tl.full([1], float("-inf"), tl.float32)
        l_run = tl.zeros([1], tl.float32)
        acc = tl.zeros([BLOCK_D], tl.float32)
        for s0 in range(0, S, BLOCK_S):
            splits = s0 + tl.arange(0, BLOCK_S)
            s_ok = splits < S
            at = (bh * S + splits) * M + r  # (BLOCK_S,) rows of part / stat
            m = tl.load(stat + at * 2, mask=s_ok, other=float("-inf"))
            ls = tl.load(stat + at * 2 + 1, mask=s_ok, other=0.0)
            p = tl.load(part + at[:, None] * D + dims[None, :],
                        mask=s_ok[:, None] & d_ok[None, :], other=0.0)
            m_new = tl.maximum(m_run, tl.max(m, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no split saw a key yet
            w = tl.exp(m - m_safe) * ls  # exp(-inf) = 0: empty splits weigh nothing
            keep = tl.exp(m_run - m_safe)
            acc = acc * keep + tl.sum(p * w[:, None], 0)
            l_run = l_run * keep + tl.sum(w, 0)
            m_run = m_new
        res = tl.where(l_run > 0, acc / tl.where(l_run > 0, l_run, 1.0), 0.0)
        tl.store(out + row * D + dims, res.to(out.dtype.element_ty), mask=d_ok)

    return decode_kernel, combine_kernel
