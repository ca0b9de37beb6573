"""Exact integer block budgets per allocation unit (DESIGN §3 "Budget").

Shapes: Ly layers, Hu allocation units per layer, U = Ly * Hu units, N key blocks per query-block
row, G budget groups (1 for the global budget, Ly for the per-layer budget), M units per group.

Given relative weights w (mean 1), the user's ``select`` and N, unit h keeps k_h blocks with

- ``sum_h k_h == K := round(select * U * N)`` exactly, whenever ``K >= U * k_min``;
- ``1 <= k_min <= k_h <= N``;
- every k_h non-decreasing in ``select``;
- equal weights giving equal counts, +-1 (the remainder goes to the lowest unit indices);
- ``select = 1`` keeping all N blocks.

Two solutions are computed (budget_allocation_survey.md §3.2 and §3.3):

1. **Continuous** (water-filling): ``x_h = clip(lam * w_h * N, k_min, N)`` with ``lam`` solved so
   that ``sum x_h = K``. This is the maximiser of ``sum_h w_h log x_h`` under the budget and the
   box; the keep ratios are ``r_h = clip(lam * w_h, k_min / N, 1)``. Note ``lam != select`` as soon
   as any unit is clipped: that difference is the upstream shortfall this module fixes.
2. **Integer** (Webster / Sainte-Laguë divisor method): block j+1 of unit h (j >= k_min) has
   priority ``w_h / (j + 0.5)``; the ``K - U * k_min`` free blocks go to the highest priorities
   in one global order, ties broken by unit index. Equivalently, ``k_h = clip(round(w_h / t),
   k_min, N)`` for the divisor t that makes the total exact. A larger ``select`` only extends the
   prefix of the same order, so no unit ever loses a block (house monotonicity).

The integer counts stay within about one block of the continuous solution
(:attr:`Allocation.rounding_gap`).

Floors. ``min_blocks`` is a hard minimum (at least one block: mandatory blocks belong here);
``min_keep_ratio`` adds a soft floor ``ceil(min_keep_ratio * N)``. When ``K`` is below the soft
floor, the floor is lowered to ``K // U`` and the allocation is *uniform* (every unit keeps
``K // U`` or one more block, the extra ones going to the lowest unit indices), with a warning;
``strict=True`` raises instead. Uniform is what keeps the counts monotone in ``select`` across
the point where the soft floor starts to bind: any weighting below it would give important units
blocks that they lose again when every unit must sit at the floor. When ``K`` is below
even the hard minimum every unit keeps ``min_blocks`` and the realised mean, above ``select``, is
reported (:attr:`Allocation.note`), never hidden.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from adaptive_dllm._checks import check_choice, check_float, check_int
from adaptive_dllm.budget.solvers import water_fill, webster
from adaptive_dllm.errors import AdllmError

logger = logging.getLogger(__name__)

BudgetMode = Literal["global", "per_layer"]


@dataclass(frozen=True, eq=False)
class Allocation:
    """Integer kept-block counts per allocation unit, with the figures that describe them.

    Only the first group of fields is passed in; the counts below ``# derived`` are computed from
    ``blocks`` so that the report can never disagree with the allocation.

    Attributes:
        blocks: Kept key blocks per query-block row, int64, shape (Ly, Hu).
        n_blocks: N, key blocks per row.
        select: Requested mean keep ratio in (0, 1].
        k_min: Effective per-unit minimum (after any lowering of the soft floor).
        requested_k_min: The floor that was asked for, ``max(min_blocks, ceil(min_keep_ratio*N))``.
        budget: ``"global"`` (one pool) or ``"per_layer"`` (each layer spends ``select`` itself).
        lam: Continuous multiplier per budget group, float64, shape (G,): ``r = clip(lam*w, ., 1)``
            for the weights used (all ones when the floor was lowered).
        continuous: Continuous block counts x_h, float64, shape (Ly, Hu).
        target_total: ``round(select * U * N)``.
        realised_keep_ratio: ``blocks.sum() / (U * N)``.
        saturated: Units with ``k == N`` (all blocks kept).
        floored: Units with ``k == k_min < N``.
        floor_lowered: Whether ``k_min < requested_k_min``.
    """

    blocks: Tensor
    n_blocks: int
    select: float
    k_min: int
    requested_k_min: int
    budget: BudgetMode
    lam: Tensor
    continuous: Tensor
    # derived
    target_total: int = field(init=False)
    realised_keep_ratio: float = field(init=False)
    saturated: int = field(init=False)
    floored: int = field(init=False)
    floor_lowered: bool = field(init=False)

    def __post_init__(self) -> None:
        b = self.blocks
        if not isinstance(b, Tensor) or b.dim() != 2 or b.dtype != torch.int64:
            raise AdllmError("Allocation.blocks must be an int64 tensor of shape (layers, units)")
        if b.numel() and (int(b.min()) < self.k_min or int(b.max()) > self.n_blocks):
            raise AdllmError(
                f"Allocation.blocks must lie in [k_min={self.k_min}, N={self.n_blocks}]"
            )
        n = self.n_blocks
        set_ = object.__setattr__
        set_(self, "target_total", round(self.select * b.numel() * n))
        set_(self, "realised_keep_ratio", int(b.sum()) / (b.numel() * n))
        set_(self, "saturated", int((b == n).sum()))
        set_(self, "floored", int(((b == self.k_min) & (b < n)).sum()))
        set_(self, "floor_lowered", self.k_min < self.requested_k_min)

    @property
    def n_units(self) -> int:
        """U, the number of allocation units."""
        return self.blocks.numel()

    @property
    def realised_total(self) -> int:
        """Kept blocks summed over all units."""
        return int(self.blocks.sum())

    @property
    def free(self) -> int:
        """Units strictly between the floor and N."""
        return self.n_units - self.saturated - self.floored

    @property
    def exact(self) -> bool:
        """Whether the realised total equals the target ``round(select * U * N)``."""
        return self.realised_total == self.target_total

    @property
    def keep_ratios(self) -> Tensor:
        """Per-unit keep ratios ``k / N``, float64, shape (Ly, Hu)."""
        return self.blocks.to(torch.float64) / self.n_blocks

    @property
    def rounding_gap(self) -> float:
        """Largest ``abs(k_h - x_h)`` between the integer and continuous solutions, in blocks."""
        return float((self.blocks.to(torch.float64) - self.continuous).abs().max())

    @property
    def note(self) -> str:
        """Why the allocation differs from the request; empty when it does not."""
        u, n = self.n_units, self.n_blocks
        parts = []
        if self.floor_lowered:
            parts.append(
                f"the floor of {self.requested_k_min} of {n} blocks per unit is above select, "
                f"so it was lowered to {self.k_min} and every unit gets the same budget (+-1)"
            )
        if not self.exact:
            parts.append(
                f"target {self.target_total} blocks is below the minimum {u} units x "
                f"{self.k_min} = {u * self.k_min}, so every unit keeps {self.k_min} "
                f"(realised mean {self.realised_keep_ratio:.4f} instead of {self.select:g})"
            )
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        """The report figures as plain Python values (JSON-ready)."""
        ratios = self.keep_ratios
        lam = [float(v) for v in self.lam]
        return {
            "select": self.select,
            "n_units": self.n_units,
            "blocks_total": self.n_blocks,
            "budget": self.budget,
            "target_total": self.target_total,
            "realised_total": self.realised_total,
            "exact": self.exact,
            "realised_mean": self.realised_keep_ratio,
            "deviation": self.realised_keep_ratio - self.select,
            "saturated": self.saturated,
            "floored": self.floored,
            "free": self.free,
            "k_min": self.k_min,
            "requested_k_min": self.requested_k_min,
            "floor_lowered": self.floor_lowered,
            "keep_ratio_min": float(ratios.min()),
            "keep_ratio_max": float(ratios.max()),
            "lambda": lam[0] if len(lam) == 1 else lam,
            "rounding_gap": self.rounding_gap,
            "note": self.note,
        }

    def layer_summary(self) -> list[dict[str, Any]]:
        """Per-layer figures: mean, min and max keep ratio, saturated and floored units."""
        ratios, n = self.keep_ratios, self.n_blocks
        rows = []
        for layer, (k, r) in enumerate(zip(self.blocks, ratios, strict=True)):
            rows.append({
                "layer": layer,
                "blocks": int(k.sum()),
                "keep_ratio_mean": float(r.mean()),
                "keep_ratio_min": float(r.min()),
                "keep_ratio_max": float(r.max()),
                "saturated": int((k == n).sum()),
                "floored": int(((k == self.k_min) & (k < n)).sum()),
                "units": k.numel(),
            })
        return rows


def allocate(
    weights: Tensor,
    select: float,
    n_blocks: int,
    *,
    min_keep_ratio: float = 0.0,
    min_blocks: int = 1,
    budget: BudgetMode = "global",
    strict: bool = False,
    floor_log_level: int = logging.WARNING,
) -> Allocation:
    """Give each allocation unit an integer number of kept key blocks.

    Args:
        weights: Relative weights, positive and finite, shape (Ly, Hu); only ratios matter
            (see :func:`~adaptive_dllm.budget.weights.relative_weights`).
        select: Target mean keep ratio in (0, 1].
        n_blocks: N, key blocks per query-block row (>= 1).
        min_keep_ratio: Soft floor on each unit's keep ratio, in [0, 1]; when ``select`` is
            below it the floor is lowered and the allocation is uniform (with a warning).
        min_blocks: Hard minimum of kept blocks per unit (>= 1), never lowered.
        budget: ``"global"``: one pool for all units (budget moves between layers);
            ``"per_layer"``: each layer keeps ``select`` of its own blocks (the layer totals differ
            by at most one block, the extra blocks going to the lowest layers).
        strict: Raise instead of lowering the floor or missing the target.
        floor_log_level: Level of the log line when the floor binds (the allocation's ``note``
            says it either way); a caller whose region always hits the floor by design passes
            ``logging.INFO``.

    Returns:
        The :class:`Allocation`.

    Raises:
        AdllmError: invalid arguments, or in strict mode a budget below the floor.
    """
    w = _check_weights(weights)  # (Ly, Hu) float64
    select, n, hard, requested = _check_budget(select, n_blocks, min_blocks, min_keep_ratio,
                                               budget)

    n_layers, n_per_layer = w.shape
    n_units = w.size
    target = round(select * n_units * n)
    k_min = requested
    if target < n_units * requested:
        k_min = max(hard, target // n_units)
        what = (
            f"select={select:g} asks for {target} of {n_units * n} blocks, below the floor of "
            f"{requested} block(s) per unit ({n_units * requested} in total)"
        )
        if strict:
            fix = ("raise select or lower the floor (min_keep_ratio, min_blocks)"
                   if target >= n_units * hard else "raise select or use more key blocks")
            raise AdllmError(f"{what}; {fix}")
        if k_min < requested:
            logger.log(floor_log_level, "%s; floor lowered to %d block(s) per unit, uniform "
                       "allocation", what, k_min)
            w = np.ones_like(w)
        if target < n_units * k_min:
            logger.log(floor_log_level, "%s; every unit keeps %d block(s), realised mean %.4f",
                       what, k_min, k_min / n)

    if budget == "global":
        groups, totals = w.reshape(1, n_units), np.array([target])
    else:
        base, extra = divmod(target, n_layers)
        groups = w
        totals = base + (np.arange(n_layers) < extra)
    totals = np.clip(totals, groups.shape[1] * k_min, groups.shape[1] * n).astype(np.int64)

    lam, cont = water_fill(groups, totals, k_min, n)
    blocks = webster(groups, totals, k_min, n, lam).reshape(n_layers, n_per_layer)
    return Allocation(
        blocks=torch.from_numpy(blocks),
        n_blocks=n,
        select=select,
        k_min=k_min,
        requested_k_min=requested,
        budget=budget,
        lam=torch.from_numpy(lam / n),
        continuous=torch.from_numpy(cont.reshape(n_layers, n_per_layer)),
    )


def _check_budget(select: float, n_blocks: int, min_blocks: int, min_keep_ratio: float,
                  budget: str) -> tuple[float, int, int, int]:
    """(select, N, hard floor, requested floor in blocks), validated."""
    select = check_float("select", select, low=0.0, high=1.0, low_open=True)
    n = check_int("n_blocks", n_blocks)
    hard = min(check_int("min_blocks", min_blocks), n)
    check_float("min_keep_ratio", min_keep_ratio, low=0.0, high=1.0)
    check_choice("budget", budget, get_args(BudgetMode))
    # Tolerance: 0.7 * 10 is 7.000000000000001 in floating point, which must stay 7 blocks.
    return select, n, hard, min(max(hard, math.ceil(float(min_keep_ratio) * n - 1e-9)), n)


def _check_weights(weights: Tensor) -> np.ndarray:
    if not isinstance(weights, Tensor):
        raise AdllmError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() != 2 or weights.numel() == 0:
        raise AdllmError(f"weights must have shape (layers, units), got {tuple(weights.shape)}")
    if weights.is_complex() or weights.dtype == torch.bool:
        raise AdllmError(f"weights must be real numbers, got dtype {weights.dtype}")
    w = weights.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(w).all() or (w <= 0).any():
        raise AdllmError(
            "weights must be positive and finite; build them from importance scores with "
            "relative_weights(), which handles NaN, Inf, negative and zero scores"
        )
    if (w / w.max() == 0).any():
        raise AdllmError("weights span more than the float64 range; rescale them")
    return w
