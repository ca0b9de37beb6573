"""The planner: block scores + the allocator's counts -> one SparsePlan per layer.

Shape legend: B batch, H query heads, Hkv KV heads, U units per layer, L length, D head dim,
bs block size, N = ceil(L / bs), N_p prompt key blocks.

Budgets: the allocator's counts depend only on the weights and N, so they are computed once per
(N, N_p) on the CPU for all layers (budget moving across layers with ``budget="global"``) and
cached here. Scores come from the configured estimator (:func:`~adaptive_dllm.attention.mass.
block_mass`) unless the caller already has them (the fused build step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from adaptive_dllm._checks import check_int
from adaptive_dllm.attention.mass import Estimator, GqaUnit, block_mass
from adaptive_dllm.attention.plan import SparsePlan, build_plan, prompt_block_count
from adaptive_dllm.budget.allocator import Allocation, BudgetMode, allocate
from adaptive_dllm.kernels.support import n_blocks


@dataclass(frozen=True)
class PlanSettings:
    """What the planner needs from a SparseConfig, bound to one model and generation.

    Attributes:
        select, min_keep_ratio, budget: The allocator's target, floor and budget scope.
        block_size: bs.
        gqa: Allocation unit (``"kv"`` or ``"query"``).
        estimator: Block scores (``"exact"`` or ``"pooled"``).
        group: Query heads per unit.
        gen_length: Generated tokens at the end of the sequence when prompt and generation keys
            are budgeted separately; None budgets all keys jointly.
    """

    select: float
    min_keep_ratio: float
    budget: BudgetMode
    block_size: int
    gqa: GqaUnit
    estimator: Estimator
    group: int
    gen_length: int | None

    def __post_init__(self) -> None:
        if self.gen_length is not None:
            check_int("gen_length", self.gen_length, minimum=0)


class Planner:
    """Builds every layer's plan for one generation and caches the allocations.

    Args:
        weights: (layers, U) float64 relative budget weights (mean 1).
        settings: The :class:`PlanSettings`.
    """

    def __init__(self, weights: torch.Tensor, settings: PlanSettings) -> None:
        self.weights = weights
        self.settings = settings
        self._allocations: dict[tuple[int, int], tuple[Allocation, Allocation | None]] = {}
        self.last_allocation: tuple[Allocation, Allocation | None] | None = None

    def allocation(self, n_blocks: int, prompt_blocks: int) -> tuple[Allocation, Allocation | None]:
        """(prompt-region, generation-region or None) allocations for N blocks, N_p of them in
        the prompt region; computed once per shape."""
        key = (n_blocks, prompt_blocks)
        if key not in self._allocations:
            st = self.settings
            opts = {"min_keep_ratio": st.min_keep_ratio, "budget": st.budget}
            prompt = allocate(self.weights, st.select, prompt_blocks, **opts)
            gen = None
            if prompt_blocks < n_blocks:
                # The generation region is a few blocks: the one-block floor binds by design
                # (stats carry the note), so it is not worth a warning per generation.
                gen = allocate(self.weights, st.select, n_blocks - prompt_blocks, **opts,
                               floor_log_level=logging.INFO)
            self._allocations[key] = (prompt, gen)
        return self._allocations[key]

    def plan(self, layer: int, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None,
             *, scores: torch.Tensor | None = None) -> SparsePlan:
        """Score ``layer``'s q/k and choose its kept blocks.

        Args:
            layer: Layer index.
            q: (B, H, L, D); k: (B, Hkv, L, D) post-RoPE.
            key_mask: (B, L) bool or None.
            scores: (B, U, N, N) block scores of this q/k when already computed (the fused
                build step); None scores here with the configured estimator.
        """
        st = self.settings
        L = q.shape[2]
        bs = st.block_size
        prompt_blocks = max(1, prompt_block_count(L, st.gen_length, bs))
        alloc_prompt, alloc_gen = self.allocation(n_blocks(L, bs), prompt_blocks)
        self.last_allocation = (alloc_prompt, alloc_gen)
        if scores is None:
            scores = block_mass(q, k, block_size=bs, key_mask=key_mask, units=st.gqa,
                                estimator=st.estimator)
        return build_plan(
            scores, alloc_prompt.blocks[layer],
            None if alloc_gen is None else alloc_gen.blocks[layer],
            layer=layer, block_size=bs, seq_len=L, prompt_blocks=prompt_blocks,
            group=st.group, key_mask=None if key_mask is None else key_mask.bool(),
        )

    def allocator_summary(self) -> tuple[float | None, str]:
        """(keep ratio the allocator promised for the last plan shape, its notes), or
        (None, "") before any plan."""
        if self.last_allocation is None:
            return None, ""
        ap, ag = self.last_allocation
        total = ap.realised_total + (0 if ag is None else ag.realised_total)
        slots = ap.n_units * (ap.n_blocks + (0 if ag is None else ag.n_blocks))
        labels = ("joint", None) if ag is None else ("prompt keys", "generation keys")
        note = "; ".join(f"{label}: {a.note}" for label, a in zip(labels, (ap, ag), strict=True)
                         if a is not None and a.note)
        return total / slots, note
