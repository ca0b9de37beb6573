"""Triton kernels for the transformer's memory-bound element-wise steps (CUDA inference only).

Shape legend: B batch, L length, H heads (query or key/value), D head dim, d hidden size,
F MLP hidden size.

The eager RMSNorm and RoPE of :mod:`adaptive_dllm.models.transformer` compute in float32 through
five to eight separate kernels each, every one a full pass over a float32 copy of the input; at
long contexts that costs more than sparse attention saves (profile in ``benchmarks/README.md``).
Each kernel here reads its input once and writes its output once, with the same float32 arithmetic
and the same roundings as the eager code, which stays the reference (CPU, training, autograd).

Nothing here is imported unless a CUDA tensor reaches :func:`rms_norm`, :func:`rotary` or
:func:`silu_mul`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["stride_x", "stride_y"])
def _rms_norm_kernel(X, W, Y, stride_x, stride_y, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(X + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)
    r = tl.math.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    # The eager code rounds the normalised row to the input dtype before the weight multiply.
    xn = (x * r).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, (xn * w).to(Y.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x^2) + eps)).to(x.dtype)``, statistics in float32 (RMSNorm,
    Zhang & Sennrich 2019, Eq. 4).

    Args:
        x: (..., d) on CUDA.
        weight: (d,).

    Returns:
        (..., d) in ``promote_types(weight.dtype, x.dtype)``, as the eager RMSNorm returns.
    """
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    if rows.shape[0]:
        block = triton.next_power_of_2(d)
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight.contiguous(), out, rows.stride(0), out.stride(0), d, eps,
            BLOCK=block, num_warps=min(16, max(1, block // 256)),
        )
    return out.view(x.shape)


@triton.jit(do_not_specialize=["L", "stride_xb", "stride_xl", "stride_cb", "stride_cl"])
def _rotary_kernel(
    X, COS, SIN, Y,
    stride_xb, stride_xl, stride_xh,
    stride_cb, stride_cl,
    L, H,
    HALF: tl.constexpr, HALF_P2: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, HALF_P2)
    ok = (offs_l[:, None] < L) & (offs_d[None, :] < HALF)
    rows = offs_l[:, None].to(tl.int64)
    c_ptr = b * stride_cb + rows * stride_cl + offs_d[None, :]
    # Both halves of the tables are read (not assumed equal): the kernel applies what it is given.
    c1 = tl.load(COS + c_ptr, mask=ok, other=0.0)
    c2 = tl.load(COS + c_ptr + HALF, mask=ok, other=0.0)
    s1 = tl.load(SIN + c_ptr, mask=ok, other=0.0)
    s2 = tl.load(SIN + c_ptr + HALF, mask=ok, other=0.0)
    for h in range(H):  # the tables are loaded once for all heads of a row block
        x_ptr = X + b * stride_xb + rows * stride_xl + h * stride_xh + offs_d[None, :]
        x1 = tl.load(x_ptr, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + HALF, mask=ok, other=0.0).to(tl.float32)
        # rotate-half: out = x * cos + [-x2, x1] * sin
        y1 = x1 * c1 + (-x2) * s1
        y2 = x2 * c2 + x1 * s2
        y_ptr = Y + ((b * H + h) * L + rows) * (2 * HALF) + offs_d[None, :]
        tl.store(y_ptr, y1.to(Y.dtype.element_ty), mask=ok)
        tl.store(y_ptr + HALF, y2.to(Y.dtype.element_ty), mask=ok)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of projections laid out as they leave the linear layer, transposed on the way out.

    Args:
        x: (B, L, H, D) on CUDA, last dim contiguous (``proj(x).view(B, L, H, D)``).
        cos, sin: (B, 1, L, D) or (1, 1, L, D) float32 tables (:func:`rotary_tables`).

    Returns:
        (B, H, L, D) contiguous in x's dtype: ``x * cos + rotate_half(x) * sin`` computed in
        float32 (Su et al. 2021, Eq. 34), equal to the eager ``apply_rotary(x.transpose(1, 2))``.
    """
    B, L, H, D = x.shape
    if D % 2 or x.stride(-1) != 1:
        raise ValueError(f"rotary needs an even head dim and a contiguous last dim, got {tuple(x.shape)}")
    if cos.shape != sin.shape or cos.dim() != 4 or cos.shape[0] not in (1, B) or cos.shape[1:] != (1, L, D):
        raise ValueError(f"rotary tables of shape {tuple(cos.shape)} / {tuple(sin.shape)} do not fit x "
                         f"{tuple(x.shape)}; expected ({B} or 1, 1, {L}, {D}) each")
    cos = cos.float().contiguous()
    sin = sin.float().contiguous()
    out = torch.empty(B, H, L, D, device=x.device, dtype=x.dtype)
    stride_cb = 0 if cos.shape[0] == 1 else cos.stride(0)
    block_l = 16
    grid = (triton.cdiv(L, block_l), B)
    if L and B:
        _rotary_kernel[grid](
            x, cos, sin, out, x.stride(0), x.stride(1), x.stride(2), stride_cb, cos.stride(2),
            L, H, HALF=D // 2, HALF_P2=triton.next_power_of_2(D // 2), BLOCK_L=block_l, num_warps=4,
        )
    return out


@triton.jit
def _silu_mul_kernel(G, U, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    # As eager: silu in float32 rounded to the input dtype, then the product rounded again.
    a = (g / (1.0 + tl.exp(-g))).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + offs, (a * u).to(Y.dtype.element_ty), mask=ok)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` (Shazeer 2020) in one pass; both (..., F), same dtype."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"silu_mul needs equal shapes and dtypes, got {tuple(gate.shape)} "
                         f"{gate.dtype} and {tuple(up.shape)} {up.dtype}")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        block = 2048
        _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=8)
    return out
