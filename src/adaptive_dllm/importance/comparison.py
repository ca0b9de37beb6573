"""Comparing and combining head-importance estimates: rank agreement and head-wise averages.

Shapes: Ly layers, H heads per layer (query or KV heads, as the artifact says).

:func:`compare` measures how far two estimates agree (Spearman and Pearson correlation, top-k
and bottom-k overlap against chance); :func:`average_importance` pools several estimates of one
model (seeds, data splits) into one artifact whose provenance lists its sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), float64."""
    order = x.argsort(stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    if values.numel() < x.numel():  # average over ties
        sums = torch.zeros(values.numel(), dtype=torch.float64).index_add(0, inverse, ranks)
        counts = torch.zeros(values.numel(), dtype=torch.float64).index_add(
            0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    return ranks


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def compare(a: HeadImportance, b: HeadImportance, *, top_k: int | None = None) -> dict[str, Any]:
    """Agreement between two estimates of the same model's heads.

    Heads where either score is NaN are left out.

    Args:
        a, b: estimates with the same shape and head kind.
        top_k: size of the top / bottom sets compared (default: a quarter of the heads).

    Returns:
        ``pearson``, ``spearman``, ``top_k``, ``top_overlap`` and ``bottom_overlap`` (fraction of
        the k most / least important heads in common), ``chance_overlap`` (k / n, the expected
        overlap of random rankings), ``n_heads`` compared.

    Raises:
        AdllmError: different shapes or head kinds, or fewer than two comparable heads.
    """
    if a.scores.shape != b.scores.shape or a.head_kind != b.head_kind:
        raise AdllmError(
            f"cannot compare {a.head_kind} scores of shape {tuple(a.scores.shape)} with "
            f"{b.head_kind} scores of shape {tuple(b.scores.shape)}"
        )
    x, y = a.scores.flatten().double(), b.scores.flatten().double()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.numel()
    if n < 2:
        raise AdllmError(f"only {n} head(s) have finite scores in both files; nothing to compare")
    k = top_k if top_k is not None else max(1, n // 4)
    if not 1 <= k <= n:
        raise AdllmError(f"top-k {k} must be in [1, {n}]")
    rx, ry = _ranks(x), _ranks(y)
    top = lambda r: set(r.argsort(descending=True, stable=True)[:k].tolist())  # noqa: E731
    bottom = lambda r: set(r.argsort(stable=True)[:k].tolist())  # noqa: E731
    return {
        "n_heads": n,
        "pearson": _pearson(x, y),
        "spearman": _pearson(rx, ry),
        "top_k": k,
        "top_overlap": len(top(rx) & top(ry)) / k,
        "bottom_overlap": len(bottom(rx) & bottom(ry)) / k,
        "chance_overlap": k / n,
    }


def average_importance(items: Sequence[HeadImportance],
                       sources: Sequence[str] | None = None) -> HeadImportance:
    """The head-wise mean of several estimates (e.g. seeds or data splits of one estimator).

    NaN (unattributed) heads are left out of each head's mean; a head NaN everywhere stays NaN.
    The provenance lists every source's estimator, seed and file (``sources``, when given).

    Raises:
        AdllmError: fewer than two inputs, or different shapes or head kinds.
    """
    if len(items) < 2:
        raise AdllmError(f"averaging needs at least two importance files, got {len(items)}")
    first = items[0]
    for i, item in enumerate(items[1:], start=1):
        if item.scores.shape != first.scores.shape or item.head_kind != first.head_kind:
            name = sources[i] if sources else f"input {i}"
            raise AdllmError(
                f"{name} has {item.head_kind} scores of shape {tuple(item.scores.shape)}, the "
                f"first has {first.head_kind} scores of shape {tuple(first.scores.shape)}; "
                "average estimates of the same model and head kind")
    stacked = torch.stack([item.scores.double() for item in items])  # (N, Ly, H)
    finite = torch.isfinite(stacked)
    total = torch.where(finite, stacked, 0).sum(0)
    mean = (total / finite.sum(0)).float()  # 0/0 -> NaN where no input has a score
    listed = [{"file": sources[i] if sources else None, "estimator": it.metadata.get("estimator"),
               "seed": it.metadata.get("seed"), "created": it.metadata.get("created")}
              for i, it in enumerate(items)]
    estimators = sorted({str(it.metadata.get("estimator")) for it in items})
    meta = {key: first.metadata.get(key) for key in ("family", "n_layers", "n_heads",
                                                      "n_kv_heads")}
    meta.update(estimator="average", settings={"mean_of": estimators, "n": len(items)},
                sources=listed)
    return HeadImportance(scores=mean, head_kind=first.head_kind, metadata=meta)
