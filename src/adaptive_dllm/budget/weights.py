"""Head importance scores -> relative budget weights with mean exactly 1.

Shapes: Ly layers, H heads per layer in the scores (query or KV heads), G query heads per KV
head (``group_size``), Hu allocation units per layer (H // G in the default ``gqa="kv"`` mode,
H in the per-query-head mode ``gqa="query"``).

The weights feed :func:`adaptive_dllm.budget.allocator.allocate`, which turns them into exact
integer block counts. A weight says "this unit deserves w times the average budget"; only ratios
between weights matter to the allocator.

Defined behaviour for awkward scores (all of it tested):

- **NaN** scores are replaced by the median of the finite scores (a neutral value), with a warning.
- **+Inf / -Inf** scores are replaced by the largest / smallest finite score, with a warning.
- **No finite score at all** (all NaN, or only infinities) raises :class:`AdllmError`.
- **Negative** scores are legitimate (signed estimators, negated gradients) and are used as they
  are: every normalisation is invariant to shifting and positively rescaling the scores.
- **All-equal** scores (all-zero included) carry no ranking, so every unit gets weight 1 and a
  warning says so. In ``per_layer`` mode a constant layer maps to the middle weight.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

from adaptive_dllm.errors import AdllmError

logger = logging.getLogger(__name__)

Normalization = Literal["global_percentile", "global", "per_layer", "rank"]
#: Allocation unit: one per KV head (its query-head group shares the scores) or per query head.
GqaUnit = Literal["kv", "query"]
GroupReduce = Literal["mean", "max"]

NORMALIZATIONS: tuple[str, ...] = ("global_percentile", "global", "per_layer", "rank")
#: Percentiles used by ``global_percentile``: scores outside them saturate at the extreme weights.
PERCENTILES = (0.05, 0.95)


def uniform_weights(n_layers: int, n_units: int) -> Tensor:
    """Equal weights: every unit gets the same budget (the SparseD baseline).

    Args:
        n_layers: Number of layers Ly.
        n_units: Allocation units per layer Hu.

    Returns:
        float64 tensor of ones, shape (Ly, Hu).
    """
    for name, value in (("n_layers", n_layers), ("n_units", n_units)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdllmError(f"{name}={value!r} must be a positive integer")
    return torch.ones(n_layers, n_units, dtype=torch.float64)


def relative_weights(
    scores: Tensor,
    *,
    normalize: Normalization = "global_percentile",
    scale: float = 2 / 3,
    invert: bool = False,
    group_size: int = 1,
    gqa: GqaUnit = "kv",
    reduce: GroupReduce = "mean",
) -> Tensor:
    """Turn importance scores (higher = more important) into relative weights with mean 1.

    Scores are normalised to [0, 1] (``norm``), centred, spread by ``scale`` and renormalised:
    ``w = 1 + 2 * scale * (norm - 0.5)`` lies in ``[1 - scale, 1 + scale]``, then ``w / mean(w)``.
    Every weight stays positive (``scale < 1``), so ``select = 1`` is always reachable.

    Normalisations:
        - ``global_percentile``: min-max between the global 5th and 95th percentiles, clamped
          (robust to outliers; falls back to ``global`` when the two percentiles coincide).
        - ``global``: min-max over all units.
        - ``per_layer``: min-max within each layer (every layer spans the full weight range;
          the budget still moves between layers through the global mean).
        - ``rank``: global ranks scaled to [0, 1], ties share their mean rank.

    Args:
        scores: Importance, shape (Ly, H), any real dtype. H is the number of query heads when
            ``group_size > 1``; pass per-KV-head scores with ``group_size=1``.
        normalize: How scores map to [0, 1], see above.
        scale: Spread of the weights, ``0 <= scale < 1``; 0 gives uniform weights. The default
            2/3 gives weights in [1/3, 5/3] before the mean normalisation (as upstream).
        invert: Give *less* budget to more important heads (ablations).
        group_size: Query heads per KV head G. With ``gqa="kv"`` the G query-head scores of a
            group are reduced to one score per KV head before normalising.
        gqa: ``"kv"``: one unit per (layer, KV head), the default; ``"query"``: one unit per
            (layer, query head), for ablations of per-query-head masks.
        reduce: How a group's query-head scores become one KV-head score: ``mean`` (equivalent
            to the sum, since normalisation ignores scale) or ``max`` (protects a group that
            holds one important head).

    Returns:
        float64 CPU weights, shape (Ly, Hu), all positive, mean 1 up to float rounding.

    Raises:
        AdllmError: bad shape or option, or no finite score.
    """
    x = _clean_scores(scores)
    _check_options(normalize=normalize, scale=scale, gqa=gqa, reduce=reduce)
    x = _group(x, group_size=group_size, gqa=gqa, reduce=reduce)  # (Ly, Hu)

    if bool((x == x.flatten()[0]).all()):
        if x.numel() > 1:
            logger.warning(
                "all %d importance scores equal %.6g: they rank nothing, so every unit gets "
                "weight 1", x.numel(), float(x.flatten()[0]),
            )
        return torch.ones_like(x)

    norm = _normalize(x, normalize)  # (Ly, Hu) in [0, 1]
    centered = norm - 0.5
    if invert:
        centered = -centered
    w = 1.0 + 2.0 * scale * centered
    return w / w.mean()


def _clean_scores(scores: Tensor) -> Tensor:
    """Validate scores and replace non-finite values as documented in the module docstring."""
    if not isinstance(scores, Tensor):
        raise AdllmError(f"importance scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2 or scores.numel() == 0:
        raise AdllmError(
            f"importance scores must have shape (layers, heads), got {tuple(scores.shape)}"
        )
    if scores.is_complex() or scores.dtype == torch.bool:
        raise AdllmError(f"importance scores must be real numbers, got dtype {scores.dtype}")
    x = scores.detach().to(device="cpu", dtype=torch.float64).clone()
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    if not bool(finite.any()):
        raise AdllmError(
            f"importance scores of shape {tuple(x.shape)} have no finite value (all NaN or Inf); "
            "re-run the importance estimator"
        )
    good = x[finite]
    nan, pos, neg = torch.isnan(x), x == float("inf"), x == float("-inf")
    parts = []
    if bool(nan.any()):
        median = float(torch.quantile(good, 0.5))
        x[nan] = median
        parts.append(f"{int(nan.sum())} NaN by the median {median:.6g}")
    if bool(pos.any()):
        x[pos] = good.max()
        parts.append(f"{int(pos.sum())} +Inf by the largest finite score")
    if bool(neg.any()):
        x[neg] = good.min()
        parts.append(f"{int(neg.sum())} -Inf by the smallest finite score")
    logger.warning("replaced %s; check the importance estimator", ", ".join(parts))
    return x


def _check_options(*, normalize: str, scale: float, gqa: str, reduce: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise AdllmError(f"normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale < 1:
        raise AdllmError(
            f"scale={scale!r} must be in [0, 1) so that every weight stays positive"
        )
    if gqa not in ("kv", "query"):
        raise AdllmError(f"gqa={gqa!r} must be 'kv' (one unit per KV head) or 'query' (per query "
                         "head)")
    if reduce not in ("mean", "max"):
        raise AdllmError(f"reduce={reduce!r} must be 'mean' or 'max'")


def _group(x: Tensor, *, group_size: int, gqa: str, reduce: str) -> Tensor:
    """Reduce per-query-head scores (Ly, H) to per-KV-head scores (Ly, H // G) when gqa='kv'."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise AdllmError(f"group_size={group_size!r} must be a positive integer")
    n_layers, n_heads = x.shape
    if n_heads % group_size:
        raise AdllmError(
            f"importance has {n_heads} heads per layer, not a multiple of group_size={group_size} "
            "query heads per KV head; pass group_size=1 for per-KV-head scores"
        )
    if gqa == "query" or group_size == 1:
        return x
    grouped = x.view(n_layers, n_heads // group_size, group_size)  # (Ly, Hkv, G)
    return grouped.mean(-1) if reduce == "mean" else grouped.amax(-1)


def _normalize(x: Tensor, mode: str) -> Tensor:
    """Map scores (Ly, Hu), not all equal, to [0, 1]."""
    if mode == "per_layer":
        lo = x.amin(dim=1, keepdim=True)
        span = x.amax(dim=1, keepdim=True) - lo
        flat = span == 0
        if bool(flat.any()):
            logger.info("%d layer(s) have constant scores; they get the middle weight",
                        int(flat.sum()))
        return torch.where(flat, torch.full_like(x, 0.5), (x - lo) / span.clamp_min(1e-300))
    if mode == "rank":
        values, inverse, counts = torch.unique(x.flatten(), return_inverse=True,
                                               return_counts=True)
        below = torch.cumsum(counts, 0) - counts  # scores strictly below each distinct value
        mean_rank = below.to(torch.float64) + (counts - 1).to(torch.float64) / 2
        return (mean_rank[inverse] / (x.numel() - 1)).view_as(x)
    lo, hi = x.min(), x.max()
    if mode == "global_percentile":
        q = torch.quantile(x.flatten(), torch.tensor(PERCENTILES, dtype=torch.float64))
        if q[1] > q[0]:
            lo, hi = q[0], q[1]
        else:
            logger.info("5th and 95th score percentiles coincide; using global min-max instead")
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
