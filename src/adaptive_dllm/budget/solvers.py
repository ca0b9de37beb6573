"""The two solutions behind :func:`~adaptive_dllm.budget.allocator.allocate`: the integer
counts (Webster / Sainte-Lague divisor method) and the continuous water-filling optimum.

Shapes: G budget groups (1 for the global budget, Ly for the per-layer budget), M units per
group, N key blocks per query-block row. See the allocator's module docstring for the maths.
"""

from __future__ import annotations

import numpy as np


def webster(
    w: np.ndarray, totals: np.ndarray, k_min: int, n: int, lam: np.ndarray
) -> np.ndarray:
    """Webster counts per group: ``clip(round_half_up(w / t), k_min, n)`` summing to ``totals``.

    Args:
        w: Positive weights, float64, shape (G, M).
        totals: Target sums, int64, shape (G,), within ``[M * k_min, M * n]``.
        lam: The continuous multipliers of :func:`_water_fill`, shape (G,), used only to start
            the search near the answer.

    Returns:
        int64 counts, shape (G, M).

    Item (h, j) (block j+1 of unit h) is selected at divisor t iff ``floor(w_h / t + 0.5) > j``,
    which is monotone in t; the largest such t is the item's priority, about ``w_h / (j + 0.5)``.
    The divisor is found by bisection on the bit patterns of positive float64 values (they sort
    like the floats), so the search is exact and ends in at most 64 steps: early when the total
    hits the target, or when every item left between the bracket ends has the same weight and
    block index, i.e. the same priority. Tied items go to the lowest unit indices.
    """
    g, m = w.shape
    wmax = w.max(axis=1)
    wn = w / wmax[:, None]  # (G, M) in (0, 1]: the divisor lives in (0, 2]
    target = totals.astype(np.float64)

    def counts(t: np.ndarray) -> np.ndarray:  # t: (G,) -> (G, M) float counts
        with np.errstate(divide="ignore", over="ignore"):
            return np.clip(np.floor(wn / t[:, None] + 0.5), k_min, n)

    def bits(t: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(t, dtype=np.float64).view(np.int64)

    # Invariant: total(lo) >= target > total(hi). t = 0 keeps all n blocks; t = 2 gives
    # floor(wn / 2 + 0.5) <= 1 <= k_min. Narrow that around the continuous divisor 1 / (lam wmax).
    lo, hi = np.zeros(g, dtype=np.int64), bits(np.full(g, 2.0))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        t_c = 1.0 / (lam * wmax)
    t_c = np.where(np.isfinite(t_c) & (t_c > 0), np.minimum(t_c, 1.0), 1.0)
    for t in (t_c * 0.75, t_c * 1.25):
        total = counts(t).sum(axis=1)
        lo = np.where(total >= target, np.maximum(lo, bits(t)), lo)
        hi = np.where(total < target, np.minimum(hi, bits(t)), hi)
    k_lo, k_hi = counts(lo.view(np.float64)), counts(hi.view(np.float64))
    done = (totals <= m * k_min) | (totals >= m * n)
    while True:
        active = ~done & (hi - lo > 1)
        if not active.any():
            break
        mid = lo + (hi - lo) // 2
        k_mid = counts(mid.view(np.float64))
        total = k_mid.sum(axis=1)
        up, down = active & (total >= target), active & (total < target)
        lo, k_lo = np.where(up, mid, lo), np.where(up[:, None], k_mid, k_lo)
        hi, k_hi = np.where(down, mid, hi), np.where(down[:, None], k_mid, k_hi)
        band = k_lo - k_hi  # items between the bracket ends, per unit
        inside = band > 0
        same = ((band <= 1).all(axis=1)
                & (np.where(inside, wn, -1.0).max(axis=1) == np.where(inside, wn, 2.0).min(axis=1))
                & (np.where(inside, k_hi, -1.0).max(axis=1)
                   == np.where(inside, k_hi, n + 1.0).min(axis=1)))
        done |= active & ((total == target) | same)

    short = target[:, None] - k_hi.sum(axis=1, keepdims=True)  # tied blocks to hand out, (G, 1)
    tied = k_lo - k_hi
    before = np.cumsum(tied, axis=1) - tied
    k = k_hi + np.clip(short - before, 0.0, tied)
    return k.astype(np.int64)


def water_fill(
    w: np.ndarray, totals: np.ndarray, k_min: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact continuous solution ``x = clip(lam * w, k_min, n)`` with ``x.sum(1) == totals``.

    Breakpoint sweep (survey §3.2): ``f(lam) = sum_h clip(lam * w_h, lo, hi)`` is piecewise
    linear; unit h leaves its floor at ``lo / w_h`` and hits its cap at ``hi / w_h``. Cumulative
    sums over the sorted breakpoints give f at every breakpoint; on the crossing interval the
    floored, free and capped sets are fixed and ``lam`` has a closed form.

    Args:
        w: Positive weights, float64, shape (G, M).
        totals: Targets, shape (G,), within ``[M * k_min, M * n]``.

    Returns:
        ``lam`` of shape (G,) and ``x`` of shape (G, M), both float64.
    """
    n_groups, m = w.shape
    lo, hi = float(k_min), float(n)
    target = totals.astype(np.float64)
    if lo == hi:  # nothing to choose: every unit keeps everything
        return hi / w.min(axis=1), np.full_like(w, hi)
    bp = np.concatenate([lo / w, hi / w], axis=1)  # (G, 2M)
    order = np.argsort(bp, axis=1, kind="stable")
    bp_s = np.take_along_axis(bp, order, axis=1)
    slope = np.cumsum(np.take_along_axis(np.concatenate([w, -w], axis=1), order, axis=1), axis=1)
    d_const = np.concatenate([np.full_like(w, -lo), np.full_like(w, hi)], axis=1)
    const = m * lo + np.cumsum(np.take_along_axis(d_const, order, axis=1), axis=1)
    f = const + bp_s * slope  # f at each breakpoint, (G, 2M)
    i = np.argmax(f >= target[:, None] - 1e-9 * target[:, None], axis=1)  # first crossing
    rows = np.arange(n_groups)
    prev = np.maximum(i - 1, 0)
    prev_slope = np.where(i > 0, slope[rows, prev], 0.0)
    prev_const = np.where(i > 0, const[rows, prev], m * lo)
    left = np.where(i > 0, bp_s[rows, prev], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(prev_slope > 0, (target - prev_const) / prev_slope, bp_s[rows, i])
    lam = np.clip(lam, left, bp_s[rows, i])
    # The ends, where float rounding of the cumulative sums could misplace the crossing.
    lam = np.where(target <= m * lo, lo / w.max(axis=1), lam)
    lam = np.where(target >= m * hi, hi / w.min(axis=1), lam)
    return lam, np.clip(lam[:, None] * w, lo, hi)
