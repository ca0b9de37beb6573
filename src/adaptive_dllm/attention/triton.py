"""The ``"triton"`` backend: the project's block-sparse Triton kernel
(:mod:`~adaptive_dllm.kernels.block_sparse`) runs a :class:`~adaptive_dllm.attention.plan.SparsePlan`.

Shape legend: B batch, H query heads, Hkv KV heads, U plan units, L length, D head dim,
bs block size, N = ceil(L / bs).

``prepare(plan)`` copies the plan's per-unit counts to the device once (the sparse steps then copy
nothing); ``run`` checks the plan and the inputs and launches the kernel. Options
(:class:`TritonOptions`): TMA loads of K and V (None = where the GPU and tensors allow it) and the
launch options per block size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptive_dllm.attention.backends import BackendBase, FusedBuildMixin
from adaptive_dllm.attention.plan import SparsePlan, check_plan_fits
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import (
    BLOCK_SIZES,
    BLOCK_SPARSE_LAUNCH,
    MAX_HEAD_DIM,
    LaunchOptions,
    check_block_size,
    check_covers_block_sizes,
    check_head_dim,
    triton_device_problem,
)


@dataclass(frozen=True)
class TritonOptions:
    """Tuning of the ``triton`` backend.

    Attributes:
        use_tma: Load K and V through TMA tensor descriptors: None = where the GPU (compute
            capability >= 9) and the tensors' alignment allow it; True / False force it.
        launch: Warps and pipeline stages per block size (float32 tiles get fewer stages).
    """

    use_tma: bool | None = None
    launch: Mapping[int, LaunchOptions] = field(default_factory=lambda: BLOCK_SPARSE_LAUNCH)

    def __post_init__(self) -> None:
        if self.use_tma not in (None, True, False):
            raise AdllmError(f"use_tma={self.use_tma!r} must be None, True or False")
        check_covers_block_sizes(self.launch, what="TritonOptions.launch")


class TritonBackend(FusedBuildMixin, BackendBase):
    """Block-sparse attention with the project's Triton kernel (CUDA, or Triton's interpreter)."""

    name = "triton"
    block_sizes = BLOCK_SIZES
    max_head_dim = MAX_HEAD_DIM

    def __init__(self, options: TritonOptions | None = None) -> None:
        super().__init__()
        self.options = options or TritonOptions()

    def supports(self, *, device_type: str, head_dim: int, block_size: int) -> str | None:
        return triton_device_problem(device_type) or super().supports(
            device_type=device_type, head_dim=head_dim, block_size=block_size)

    def prepare(self, plan: SparsePlan, n_heads: int) -> torch.Tensor:
        """The plan's per-unit counts as an int32 tensor on the plan's device."""
        if int(plan.counts.min()) < 1:  # a CPU tensor: no device sync
            raise AdllmError(f"plan of layer {plan.layer} keeps no block for some unit "
                             f"(counts {plan.counts.tolist()}); every row must keep >= 1 block")
        return plan.counts.to(device=plan.indices.device, dtype=torch.int32)

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor:
        """Block-sparse attention following ``plan``: for query block i of head h,
        ``softmax(q k^T / sqrt(D)) v`` over the keys of the blocks kept in row i by h's unit
        (padded keys get no weight). q (B, H, L, D), k and v (B, Hkv, L, D); the plan is built
        for length L and batch 1 or B. Returns (B, H, L, D) in q's dtype, contiguous."""
        problem = triton_device_problem(q.device.type)
        if problem:
            raise AdllmError(problem)
        plan = check_plan_fits(plan, q, self.name)
        B, H, L, D = q.shape
        Hkv = k.shape[1]
        check_block_size(plan.block_size, supported=self.block_sizes, who="the 'triton' backend",
                         hint="")
        if plan.n_heads != H or H % Hkv:
            raise AdllmError(f"plan for {plan.n_heads} query heads cannot run q/k of {H} query "
                             f"and {Hkv} KV heads; build the plan from this layer's q/k")
        check_head_dim(D, who="the 'triton' backend", hint="use backend 'flex'")
        from adaptive_dllm.kernels.block_sparse import block_sparse_attention, tma_usable

        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        counts = self.prepare(plan, H) if prepared is None else prepared
        use_tma = tma_usable(q, k, v) if self.options.use_tma is None else self.options.use_tma
        launch = self.options.launch[plan.block_size]
        signature = ("block_sparse", q.dtype, D, plan.block_size, key_mask is not None, use_tma,
                     launch, os.environ.get("TRITON_INTERPRET") == "1")
        return self.timed_first_use(signature, q.device, lambda: block_sparse_attention(
            q, k, v, plan.indices, counts, block_size=plan.block_size, group=plan.group,
            key_mask=key_mask, launch=launch, use_tma=use_tma))
