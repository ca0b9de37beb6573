"""The ``"flex"`` backend: FlexAttention executes a :class:`~adaptive_dllm.attention.plan.SparsePlan`.

Shape legend:
    B batch, H query heads, Hkv KV heads, U plan units, L length, D head dim, bs block size,
    N = ceil(L / bs), kmax = most kept blocks in a row.

The BlockMask is built **directly from the plan's block indices** (``BlockMask.from_kv_blocks``),
once per plan (``FlexBackend.prepare``, kept by the caller beside the plan): no mask function is
evaluated over L x L to find the blocks. Kept blocks are split into

- *full* blocks (every key real): the kernel skips the mask function entirely;
- *partial* blocks (some key is padding): the mask function (``kv >= start[b]`` for the model's
  left padding) is applied inside those blocks only; there are none without padding.

K and V are never repeated: the kernel runs GQA-natively (``enable_gqa``); only the small index
arrays are broadcast from KV-head units to the H query heads (the flex kernel indexes them by
query head).

On CUDA the kernel is ``torch.compile(flex_attention, dynamic=True)``, compiled once per
(dtype, head dim, GQA, block size, kernel options) at first use: sequence lengths and batch sizes
are symbolic, and duck sizing is switched off so that a block count that happens to equal a
head count is not baked in. A new prompt length therefore reuses the compiled kernel; the
backend's ``compile_log`` records the one-time compilation. On the CPU the eager flex implementation
runs; it ignores the block indices and evaluates the mask function everywhere, so there the mask
function also encodes the kept blocks (``keep[b, h, q // bs, kv // bs] & valid[b, kv]``). Tests and
tiny models only.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from adaptive_dllm.attention.backends import BackendBase, FusedBuildMixin
from adaptive_dllm.attention.plan import SparsePlan, check_plan_fits
from adaptive_dllm.kernels.support import BLOCK_SIZES, check_covers_block_sizes

#: Triton tile options of the compiled flex kernel per block size (BLOCK_M / BLOCK_N must divide
#: the block); 128 was tuned on an H100 (``benchmarks/README.md``).
FLEX_TILES: Mapping[int, Mapping[str, Any]] = MappingProxyType({
    128: MappingProxyType({"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2,
                           "USE_TMA": True}),
    64: MappingProxyType({"BLOCK_M": 64, "BLOCK_N": 64}),
    32: MappingProxyType({"BLOCK_M": 32, "BLOCK_N": 32}),
    16: MappingProxyType({"BLOCK_M": 16, "BLOCK_N": 16}),
})

_lock = threading.Lock()
_compiled: Any = None  # the process's torch.compile(flex_attention), made at first use


@dataclass(frozen=True)
class FlexOptions:
    """Tuning of the ``flex`` backend.

    Attributes:
        tiles: Kernel options of the compiled flex kernel per block size (``kernel_options``).
    """

    tiles: Mapping[int, Mapping[str, Any]] = field(default_factory=lambda: FLEX_TILES)

    def __post_init__(self) -> None:
        check_covers_block_sizes(self.tiles, what="FlexOptions.tiles")


class FlexBackend(FusedBuildMixin, BackendBase):
    """Block-sparse attention with FlexAttention (compiled on CUDA, eager elsewhere)."""

    name = "flex"
    block_sizes = BLOCK_SIZES

    def __init__(self, options: FlexOptions | None = None) -> None:
        super().__init__()
        self.options = options or FlexOptions()

    def prepare(self, plan: SparsePlan, n_heads: int) -> Any:
        """The plan's flex BlockMask for ``n_heads`` query heads."""
        return block_mask(plan, n_heads)

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor:
        """Block-sparse attention following ``plan``: q (B, H, L, D), k and v (B, Hkv, L, D),
        key_mask (B, L) bool, which must be the mask the plan was built with (the plan's partial
        blocks encode it); ``prepared`` is ``prepare(plan, H)`` (None: built here). Returns
        (B, H, L, D) in q's dtype."""
        plan = check_plan_fits(plan, q, self.name)
        B, H, L, D = q.shape
        mask = block_mask(plan, H) if prepared is None else prepared
        gqa = H != k.shape[1]
        if not q.is_cuda:
            from torch.nn.attention.flex_attention import flex_attention

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
        options = dict(self.options.tiles[plan.block_size])
        signature = (q.dtype, D, H // k.shape[1], plan.block_size, tuple(sorted(options.items())))
        return self.timed_first_use(signature, q.device,
                                    lambda: _run_compiled(q, k, v, mask, gqa, options),
                                    synchronize=True)


def block_mask(plan: SparsePlan, n_heads: int) -> Any:
    """The plan's flex BlockMask for ``n_heads`` query heads (build it once per plan)."""
    from torch.nn.attention.flex_attention import BlockMask

    keep = plan.block_mask()  # (B, U, N, N)
    if n_heads != plan.n_units:
        keep = keep.repeat_interleave(n_heads // plan.n_units, dim=1)  # (B, H, N, N)
    keep = keep.contiguous()
    B, _, N, _ = keep.shape
    bs, L = plan.block_size, plan.seq_len
    if plan.key_mask is None:
        valid = torch.ones(B, L, dtype=torch.bool, device=keep.device)
        partial = torch.zeros_like(keep)
    else:
        valid = plan.key_mask.bool()
        padded_block = F.pad(~valid, (0, N * bs - L), value=False).view(B, N, bs).any(-1)
        partial = keep & padded_block[:, None, None, :]
    full = keep & ~partial
    kmax = plan.indices.shape[-1]
    has_flag = _has_compute_q_blocks()
    if not has_flag:
        kmax = N  # older torch derives the transposed indices, which need all N columns
    p_num, p_idx = _compact(partial, kmax)
    f_num, f_idx = _compact(full, kmax)
    extra = {"compute_q_blocks": False} if has_flag else {}
    if keep.is_cuda:
        # The compiled kernel applies the mask only inside partial blocks and takes the block
        # structure from the indices: the mask needs nothing but key validity.
        mask_mod = _key_mask_mod(valid)
    else:
        # Eager flex ignores the indices and evaluates the mask everywhere: encode the blocks.
        mask_mod = _block_mask_mod(keep, valid, bs)
    return BlockMask.from_kv_blocks(
        p_num, p_idx, f_num, f_idx, BLOCK_SIZE=bs, mask_mod=mask_mod,
        seq_lengths=(L, L), **extra,
    )


def _compact(blocks: torch.Tensor, kmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, N, N) bool -> counts (B, H, N) int32 and ascending indices (B, H, N, kmax) int32."""
    num = blocks.sum(-1, dtype=torch.int32)
    order = torch.sort(blocks.to(torch.uint8), dim=-1, descending=True, stable=True).indices
    return num.contiguous(), order[..., :kmax].to(torch.int32).contiguous()


def _block_mask_mod(keep: torch.Tensor, valid: torch.Tensor, bs: int) -> Any:
    def mask_mod(b, h, q_idx, kv_idx):  # flex's callback signature
        return keep[b, h, q_idx // bs, kv_idx // bs] & valid[b, kv_idx]

    return mask_mod


def _key_mask_mod(valid: torch.Tensor) -> Any:
    """Key validity as a flex mask: a per-row start index for left padding (the model's layout:
    one 1-D lookup), else a (B, L) lookup."""
    B, L = valid.shape
    start = torch.where(valid.any(-1), valid.int().argmax(-1), L).to(torch.int32)  # (B,)
    arange = torch.arange(L, device=valid.device)
    left_padded = bool(torch.equal(valid, arange[None, :] >= start[:, None]))  # one host read
    if left_padded:
        def mask_mod(b, h, q_idx, kv_idx):  # flex's callback signature
            return kv_idx >= start[b]
    else:
        lookup = valid.to(torch.int32).contiguous()

        def mask_mod(b, h, q_idx, kv_idx):  # flex's callback signature
            return lookup[b, kv_idx] != 0

    return mask_mod


def _run_compiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, gqa: bool,
                  options: dict[str, Any]) -> torch.Tensor:
    global _compiled
    import torch.fx.experimental._config as fx_config

    if _compiled is None:
        from torch.nn.attention.flex_attention import flex_attention

        with _lock:
            if _compiled is None:
                # No FX graph cache: with torch 2.11 it served a graph compiled for one block
                # size to a later call with another (MHA; silently wrong outputs, seen on an
                # H100 and reproduced in a fresh process). Without it every process compiles
                # each kernel signature once (reported in the backend's compile_log).
                _compiled = torch.compile(flex_attention, dynamic=True, fullgraph=True,
                                          options={"fx_graph_cache": False})
    # One compiled graph per kernel signature (dtype, head dim, GQA, block size, options): a
    # process that serves several models needs more than dynamo's default of 8, and fullgraph
    # turns hitting that limit into an error. Scoped to this call, not set globally.
    with fx_config.patch(use_duck_shape=False), torch._dynamo.config.patch(recompile_limit=64):
        return _compiled(q, k, v, block_mask=mask, enable_gqa=gqa, kernel_options=dict(options))


@functools.cache
def _has_compute_q_blocks() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:  # pragma: no cover - torch without flex
        return False
    return "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters

