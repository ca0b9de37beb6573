"""SparsePlan: the immutable per-layer choice of key blocks that the attention backends execute.

Shape legend:
    B batch, U allocation units (KV heads or query heads), G query heads per unit, L length,
    bs block size, N = ceil(L / bs) blocks (query rows and key columns), kmax = max kept blocks
    in a row.

The planner (:mod:`adaptive_dllm.sparsity.planner`) produces a plan from block scores and the
allocator's counts; backends only execute it (``prepare`` once, then ``run``). A plan holds no
backend data: what a backend derives from it (a flex BlockMask, device-side counts) is the
backend's ``prepare(plan)`` result, kept by whoever keeps the plan. For every
unit u, **every query-block row keeps exactly k_u key blocks**, where k_u is the allocator's
count (``counts``), chosen per row as the blocks of highest score:

- ``region="joint"``: the top k_u of all N key blocks;
- ``region="separate"``: the top ``k_u^prompt`` of the prompt key blocks ``[0, N_p)`` plus the top
  ``k_u^gen`` of the generation key blocks ``[N_p, N)`` (``N_p = ceil(P / bs)``: the block that
  straddles the boundary counts with the prompt, as upstream), each region its own allocation.

**Mandatory block.** Each query block always keeps its own (diagonal) key block: its score is
raised to +inf before ranking, so it takes one of the row's k_u slots (inside the budget, never
on top of it; k_u >= 1 per region guarantees room). Ties in score go to the lower block index.

The plan's realised keep ratio is *measured* from ``indices`` (:meth:`SparsePlan.kept_blocks`),
not inferred from ``select``; the tests check it equals the allocator's total exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import n_blocks


@dataclass(frozen=True, eq=False)
class SparsePlan:
    """Kept key blocks of one layer for one input shape.

    Attributes:
        layer: Layer index.
        block_size: bs in tokens.
        seq_len: L the plan was built for.
        n_blocks: N = ceil(L / bs).
        prompt_blocks: N_p, key blocks of the prompt region (N for a joint plan).
        group: Query heads per unit (G for KV-head units, 1 for query-head units).
        counts: (U,) int64 on the CPU: key blocks kept in every query-block row.
        indices: (B, U, N, kmax) int32 on the device: kept key blocks of each row in ascending
            order, padded with -1 (rows differ between samples, counts do not).
        key_mask: (B, L) bool key validity the plan was built with, or None (no padding).
    """

    layer: int
    block_size: int
    seq_len: int
    n_blocks: int
    prompt_blocks: int
    group: int
    counts: torch.Tensor
    indices: torch.Tensor
    key_mask: torch.Tensor | None = None

    @property
    def n_units(self) -> int:
        return self.indices.shape[1]

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def n_heads(self) -> int:
        """Query heads the plan covers (U * G)."""
        return self.n_units * self.group

    def block_mask(self) -> torch.Tensor:
        """Dense kept-block matrix, bool (B, U, N, N), True where key block j is kept for row i."""
        B, U, N, _ = self.indices.shape
        idx = self.indices.long()
        valid = idx >= 0
        dense = torch.zeros(B, U, N, N + 1, dtype=torch.bool, device=idx.device)
        dense.scatter_(-1, torch.where(valid, idx, N), valid)  # padding lands in column N
        return dense[..., :N]

    def kept_blocks(self) -> tuple[int, int]:
        """(kept prompt-region blocks, kept generation-region blocks) over all samples, units
        and rows, counted from ``indices`` (one host read)."""
        idx = self.indices
        prompt = ((idx >= 0) & (idx < self.prompt_blocks)).sum()
        total = (idx >= 0).sum()
        prompt, total = torch.stack([prompt, total]).tolist()
        return int(prompt), int(total - prompt)

    def total_blocks(self) -> tuple[int, int]:
        """(prompt-region, generation-region) block slots over all samples, units and rows."""
        rows = self.batch * self.n_units * self.n_blocks
        return rows * self.prompt_blocks, rows * (self.n_blocks - self.prompt_blocks)

    def keep_ratio(self) -> float:
        """Kept fraction of all (row, key block) pairs, measured from ``indices``."""
        kept = sum(self.kept_blocks())
        return kept / sum(self.total_blocks())


def check_plan_fits(plan: SparsePlan | None, q: torch.Tensor, backend: str) -> SparsePlan:
    """``plan``, after one-line errors for a sparse backend called without a plan, or with one
    built for another length or batch (a batch-1 plan serves any batch)."""
    if plan is None:
        raise AdllmError(f"the {backend!r} backend needs a sparse plan; dense attention uses 'sdpa'")
    B, _, L, _ = q.shape
    if plan.seq_len != L or plan.batch not in (1, B):
        raise AdllmError(f"plan built for length {plan.seq_len} and batch {plan.batch} cannot "
                         f"run on length {L} and batch {B}")
    return plan


def plan_fits(plan: SparsePlan | None, q: torch.Tensor) -> bool:
    """Whether ``plan`` was built for exactly q's length and batch (else it is rebuilt)."""
    return plan is not None and plan.seq_len == q.shape[2] and plan.batch == q.shape[0]


def prompt_block_count(seq_len: int, gen_length: int | None, block_size: int) -> int:
    """N_p = ceil(P / bs) with P = L - G: the straddling block counts with the prompt.

    Returns N (one joint region) when ``gen_length`` is None.
    """
    n = n_blocks(seq_len, block_size)
    if gen_length is None:
        return n
    prompt = max(0, seq_len - gen_length)
    return min(n, -(-prompt // block_size))


def build_plan(
    scores: torch.Tensor,
    counts_prompt: torch.Tensor,
    counts_gen: torch.Tensor | None,
    *,
    layer: int,
    block_size: int,
    seq_len: int,
    prompt_blocks: int,
    group: int,
    key_mask: torch.Tensor | None = None,
) -> SparsePlan:
    """Choose every row's key blocks from the block scores and the allocator's counts.

    Args:
        scores: (B, U, N, N) float block scores (query block, key block), e.g. the exact mass.
        counts_prompt: (U,) int64 blocks kept per row in the prompt region ``[0, N_p)`` (the
            whole row when ``prompt_blocks == N``).
        counts_gen: (U,) int64 blocks kept per row in ``[N_p, N)``, or None when that region is
            empty.
        layer, block_size, seq_len, prompt_blocks, group, key_mask: see :class:`SparsePlan`.

    Returns:
        The plan; ``indices`` on ``scores``' device.
    """
    B, U, N, N2 = scores.shape
    assert N == N2 == n_blocks(seq_len, block_size), (scores.shape, seq_len, block_size)
    assert 0 < prompt_blocks <= N
    device = scores.device
    s = scores.float().clone()
    diag = torch.arange(N, device=device)
    s[:, :, diag, diag] = float("inf")  # mandatory self block, inside the budget
    cp = counts_prompt.to(torch.int64).cpu()
    keep = _top_per_row(s[..., :prompt_blocks], cp.to(device))
    counts = cp.clone()
    if prompt_blocks < N:
        assert counts_gen is not None
        cg = counts_gen.to(torch.int64).cpu()
        keep_gen = _top_per_row(s[..., prompt_blocks:], cg.to(device))
        keep = torch.cat([keep, keep_gen], dim=-1)
        counts = counts + cg
    kmax = max(1, int(counts.max()))
    order = torch.sort(keep.to(torch.uint8), dim=-1, descending=True, stable=True).indices
    idx = order[..., :kmax]  # kept columns first, ascending (stable)
    slot = torch.arange(kmax, device=device)
    idx = torch.where(slot < counts.to(device)[None, :, None, None], idx, -1).to(torch.int32)
    return SparsePlan(layer=layer, block_size=block_size, seq_len=seq_len, n_blocks=N,
                      prompt_blocks=prompt_blocks, group=group, counts=counts,
                      indices=idx.contiguous(), key_mask=key_mask)


def _top_per_row(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep the ``k[u]`` highest scores of every row of unit u, bool like ``scores``.

    One stable sort for all units and rows (no loop over units; ties go to lower indices).

    Args:
        scores: (B, U, R, C) float.
        k: (U,) int64 on ``scores``' device, 0 <= k <= C.
    """
    C = scores.shape[-1]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (B, U, R, C)
    rank_kept = torch.arange(C, device=scores.device) < k[None, :, None, None]  # (1, U, 1, C)
    return torch.zeros_like(order, dtype=torch.bool).scatter_(-1, order, rank_kept.expand_as(order))
