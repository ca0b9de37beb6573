"""The bidirectional transformer shared by every diffusion LM family (LLaDA, Dream, bundled).

Shape legend:
    B batch, L sequence length, d hidden size, H query heads, Hkv key/value heads,
    D head dim, V vocabulary, F MLP hidden size.

Pre-norm blocks: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)); RoPE on q and k (rotate-half
form, Su et al. 2021, Eq. 34); SwiGLU MLP (Shazeer 2020); no causal mask. Padding is handled
by a key mask and per-row positions that start at the first real token, so a left-padded row
computes what the same row computes alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from adaptive_dllm.attention.api import AttentionHook, attend
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import triton_available
from adaptive_dllm.models.config import ModelConfig

_fused_state = threading.local()  # per thread, like torch's grad mode


class KVCache(Protocol):
    """What ``Transformer.forward(cache=...)`` needs (implemented by
    :class:`adaptive_dllm.generation.cache.BlockCache`).

    Attributes:
        seq_len: Lf, the full sequence length the cache covers.
        window: None in a refresh forward (``input_ids`` is the whole sequence); else
            ``(lo, hi)``, the positions ``input_ids`` holds (a cached step).
    """

    seq_len: int
    window: tuple[int, int] | None

    def update(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's (B, Hkv, W, D) post-RoPE k and v; return the keys and values
        attention reads: (B, Hkv, Lf, D) in a cached step, the given ones in a refresh."""
        ...


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Switch the Triton RMSNorm/RoPE/SwiGLU kernels (:mod:`adaptive_dllm.kernels.elementwise`) on or off.

    They are on by default and only ever run for CUDA tensors outside autograd; off, CUDA runs
    the eager float32 code too (the reference, for tests and benchmarks). The switch applies to
    the calling thread only.
    """
    previous = fused_kernels_enabled()
    _fused_state.enabled = enabled
    try:
        yield
    finally:
        _fused_state.enabled = previous


def fused_kernels_enabled() -> bool:
    """Whether :func:`fused_kernels` is on in this thread (default True)."""
    return getattr(_fused_state, "enabled", True)


_FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _use_fused(*tensors: torch.Tensor) -> bool:
    if not (fused_kernels_enabled() and tensors[0].is_cuda):
        return False
    if any(t.dtype not in _FUSED_DTYPES for t in tensors):
        return False  # the kernels compute in float32: float64 stays eager
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # the kernels have no backward: training and gradient estimators run eager
    return triton_available()


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, statistics in float32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_fused(x, self.weight):
            from adaptive_dllm.kernels import elementwise as fused

            return fused.rms_norm(x, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_tables(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for RoPE.

    Args:
        positions: (B, L) integer positions.
    Returns:
        cos, sin: (B, 1, L, D) float32, angles ``pos * theta^(-2i/D)`` duplicated to both halves.
    """
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[..., None] * inv_freq  # (B, L, D/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, L, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, h, L, D) by the tables, in float32 (LLaDA's rope_full_precision)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None,
        layer: int,
        hook: AttentionHook | None,
        gate: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B,Hkv,L,D)
        if _use_fused(q, k):
            from adaptive_dllm.kernels import elementwise as fused

            q, k = fused.rotary(q, *rope), fused.rotary(k, *rope)  # (B,H,L,D), (B,Hkv,L,D)
        else:
            q, k = apply_rotary(q.transpose(1, 2), *rope), apply_rotary(k.transpose(1, 2), *rope)
        if cache is not None:
            # Cached step: the window's queries read the cached keys plus their own, (B,Hkv,Lf,D).
            k, v = cache.update(layer, k, v)
        if hook is None:
            out = attend(q, k, v, key_mask=key_mask)
        else:
            out = hook(layer, q, k, v, key_mask)
        if gate is not None:
            # Per-head output gates (HeadIG, pruning): scale each head before the projection.
            out = out * gate.to(out.dtype)[None, :, None, None]
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)  # (B, L, F)
        if _use_fused(gate, up):
            from adaptive_dllm.kernels import elementwise as fused

            return self.down_proj(fused.silu_mul(gate, up))
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, key_mask, hook, gate, cache=None):  # noqa: ANN001 - internal
        x = x + self.attn(self.attn_norm(x), rope, key_mask, self.layer, hook, gate, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Bidirectional pre-norm RoPE/SwiGLU transformer returning token logits.

    Logits are aligned as the upstream model returns them: for Dream, row i scores token i+1
    (the family spec's ``logit_shift`` tells consumers to shift); for LLaDA row i scores token i.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        attn: AttentionHook | None = None,
        head_gates: torch.Tensor | None = None,
        logits_from: int = 0,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits for every position from ``logits_from`` on.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L) bool or 0/1, True/1 = real token (left padding expected).
                None means every position is real.
            attn: optional hook that takes over attention (e.g. a sparse session).
            head_gates: optional (n_layers, H) multipliers on each head's attention output
                (1 = unchanged, 0 = head removed); differentiable.
            logits_from: first position whose logits are computed. Samplers that only decide
                the generated region skip the output head over the prompt (at 64k prompt
                tokens that head costs as much as a large share of a step).
            cache: approximate K/V cache (:class:`KVCache`). In a refresh forward
                (``cache.window`` None) everything runs as without it and every layer's K/V is
                stored. In a cached step ``input_ids`` holds only the window ``(lo, hi)`` of the
                ``cache.seq_len`` positions, ``attention_mask`` still covers all of them, and
                the window attends to the cached K/V plus its own; logits are window rows.

        Returns:
            (B, L - logits_from, V) logits in the model dtype (L = the window's length in a
            cached step).
        """
        B, L = input_ids.shape
        lo, hi = 0, L
        if cache is not None and cache.window is not None:
            lo, hi = cache.window
            if hi - lo != L or hi > cache.seq_len:
                raise AdllmError(f"cache window {cache.window} does not match {L} input tokens "
                                 f"of a {cache.seq_len}-token sequence")
            L = cache.seq_len
        if L > self.config.max_seq_len:
            raise AdllmError(
                f"sequence of {L} tokens exceeds the model maximum of {self.config.max_seq_len}; "
                "shorten the prompt or the generation length"
            )
        if head_gates is not None and head_gates.shape != (self.config.n_layers, self.config.n_heads):
            raise AdllmError(
                f"head_gates shape {tuple(head_gates.shape)} must be "
                f"({self.config.n_layers}, {self.config.n_heads})"
            )
        key_mask = None
        if attention_mask is None:
            positions = torch.arange(L, device=input_ids.device).expand(B, L)
        else:
            key_mask = attention_mask.bool()
            # Per-row positions starting at the first real token; padded slots get 0.
            positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)
        rope = rotary_tables(positions[:, lo:hi], self.config.head_dim, self.config.rope_theta)
        x = self.embed(input_ids)
        for i, block in enumerate(self.layers):
            gate = None if head_gates is None else head_gates[i]
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, key_mask, attn, gate, cache, use_reentrant=False)
            else:
                x = block(x, rope, key_mask, attn, gate, cache)
        return self.lm_head(self.norm(x[:, logits_from:]))
