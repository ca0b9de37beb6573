"""Cheap head-importance estimators: uniform, seeded random and block-level attention statistics.

Shape legend: Ly layers, H query heads, Hkv key/value heads, G = H / Hkv, L sequence length,
D head dim, bs block size, Nq / Nk query / key blocks (ceil(L / bs)), N examples.

Attention statistics take one forward pass per calibration example in the state the sparse plan
is built from: the completion span masked at ``mask_ratio`` (default 0.8, what is still masked at
the switch step of skip = 0.2), masks seeded by (seed, example index). For every layer and query
head the exact block mass is measured,

    M[qb, kb] = mean_{i in block qb} sum_{j in block kb} softmax_j(q_i . k_j / sqrt(D)),

so each row M[qb, :] is a distribution over the Nk key blocks, which is what the sparse plan
ranks. Per row (then averaged over the rows and the examples):

=================  =====================================================  ======================
method             per-row statistic                                      higher means
=================  =====================================================  ======================
``entropy``        H(M[qb]) / log Nk (normalised entropy)                 more dispersed
``effective``      exp(H(M[qb])) / Nk (effective blocks, as a fraction)   more dispersed
``topk``           1 - mass of the top ceil(top_frac Nk) blocks           more dispersed
``coverage``       blocks needed to reach ``coverage`` of the mass / Nk   more dispersed
``deficit``        1 - mass of the top max(1, round(select Nk)) blocks    more mass lost
=================  =====================================================  ======================

All follow "higher = more important": a head whose attention is spread over many blocks needs
more blocks to keep its mass, so it deserves a larger budget (``topk`` and ``deficit`` are
converted as 1 - mass; the raw mass is the opposite convention). The scores are per query head
(``head_kind="query"``); the budget code aggregates a GQA group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from adaptive_dllm.attention import mass as scoring
from adaptive_dllm.attention.api import attend
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.importance.calibration import CalibrationSet, Example, scored_span
from adaptive_dllm.importance.headig import HeadIGSettings, derive_seed, headig
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.masking import mask_count

Statistic = Literal["entropy", "effective", "topk", "coverage", "deficit"]
STATISTICS: tuple[str, ...] = ("entropy", "effective", "topk", "coverage", "deficit")
QuerySpan = Literal["all", "completion"]
RandomDistribution = Literal["uniform", "normal", "exponential"]
RANDOM_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "normal", "exponential")

_CONVERSION = {
    "entropy": "normalised entropy of the block-mass rows",
    "effective": "exp(entropy) / Nk",
    "topk": "1 - top-k block mass (k = ceil(top_frac Nk))",
    "coverage": "blocks to reach the coverage target / Nk",
    "deficit": "1 - block mass kept at a uniform budget (k = max(1, round(select Nk)))",
}


def _meta(config: ModelConfig, estimator: str, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"family": config.family, "n_kv_heads": config.n_kv_heads, "estimator": estimator,
            "settings": settings, "sign": "higher_is_more_important", **extra}


def uniform_importance(config: ModelConfig) -> HeadImportance:
    """Equal importance for every query head (the SparseD baseline)."""
    scores = torch.ones(config.n_layers, config.n_heads)
    return HeadImportance(scores=scores, head_kind="query",
                          metadata=_meta(config, "uniform", {}, data=None, seed=None))


def random_importance(config: ModelConfig, *, seed: int = 0,
                      distribution: RandomDistribution = "uniform") -> HeadImportance:
    """Seeded random importance, a control for ablations (CPU generator, so any device agrees).

    ``distribution``: ``uniform`` U[0, 1), ``normal`` N(0, 1) (signed, like HeadIG) or
    ``exponential`` Exp(1) (positive and heavy-tailed, so budgets spread unevenly).
    """
    if distribution not in RANDOM_DISTRIBUTIONS:
        raise AdllmError(f"random distribution {distribution!r} must be one of "
                         f"{', '.join(RANDOM_DISTRIBUTIONS)}")
    gen = torch.Generator().manual_seed(seed)
    shape = (config.n_layers, config.n_heads)
    if distribution == "normal":
        scores = torch.randn(shape, generator=gen)
    elif distribution == "exponential":
        scores = torch.empty(shape).exponential_(1.0, generator=gen)
    else:
        scores = torch.rand(shape, generator=gen)
    label = {"uniform": "uniform[0,1)", "normal": "normal(0,1)", "exponential": "exponential(1)"}
    return HeadImportance(scores=scores, head_kind="query",
                          metadata=_meta(config, "random", {"distribution": label[distribution]},
                                         data=None, seed=seed))


def block_mass(q: Tensor, k: Tensor, *, block_size: int, key_mask: Tensor | None = None) -> Tensor:
    """Exact block-level attention mass per query head, as row distributions.

    :func:`adaptive_dllm.attention.mass.block_mass` (Triton on CUDA, chunked torch elsewhere;
    nothing of size (B, H, L, L)) sums the mass over the queries of a block; dividing each row by
    its total (the number of real queries in the block) gives the mean over those queries.

    Args:
        q: (B, H, L, D) queries (post-RoPE).
        k: (B, Hkv, L, D) keys (post-RoPE).
        block_size: bs.
        key_mask: (B, L) bool, True = real token; padded keys get no mass and padded queries
            do not count.

    Returns:
        (B, H, Nq, Nk) float32 rows summing to 1 (0 for query blocks that are all padding).
    """
    mass = scoring.block_mass(q, k, block_size=block_size, key_mask=key_mask, units="query")
    return mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)


def row_statistics(mass: Tensor, *, top_frac: float = 0.1, coverage: float = 0.9,
                   select: float = 0.3) -> dict[str, Tensor]:
    """Per-row statistics of block-mass rows (see the module table).

    Args:
        mass: (..., Nk) rows summing to 1.

    Returns:
        {statistic: (...) float32}.
    """
    nk = mass.shape[-1]
    p = mass.clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    ordered = p.sort(-1, descending=True).values.cumsum(-1)  # (..., Nk) mass of the top j+1
    k_top = min(nk, max(1, math.ceil(top_frac * nk)))
    k_sel = min(nk, max(1, round(select * nk)))
    # Blocks needed: 1 + number of prefixes still below the target (tolerance for rounding).
    needed = 1 + (ordered < coverage - 1e-6).sum(-1).clamp_max(nk - 1)
    return {
        "entropy": entropy / math.log(nk) if nk > 1 else torch.zeros_like(entropy),
        "effective": entropy.exp() / nk,
        "topk": 1 - ordered[..., k_top - 1],
        "coverage": needed.float() / nk,
        "deficit": 1 - ordered[..., k_sel - 1],
    }


def _switch_state(example: Example, index: int, *, mask_ratio: float, mask_id: int,
                  logit_shift: bool, seed: int) -> Tensor:
    """(L,) ids with the completion span masked at ``mask_ratio`` (``mask_count``: floor(r n + 1/2),
    clamped to [1, n], the rule of the likelihood evaluation)."""
    begin, end = scored_span(example, logit_shift)
    n = end - begin
    k = mask_count(n, mask_ratio)
    gen = torch.Generator().manual_seed(derive_seed("switch", seed, index))
    where = begin + torch.randperm(n, generator=gen)[:k]
    ids = example.ids.clone()
    ids[where] = mask_id
    return ids


class _StatsHook:
    """Attention hook: dense attention, plus the per-head row statistics of every layer."""

    def __init__(self, n_layers: int, rows: Tensor, *, block_size: int, options: dict[str, float]):
        self.rows, self.block_size, self.options = rows, block_size, options
        self.per_layer: list[Tensor] = [torch.empty(0)] * n_layers  # (5, H) per layer

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        mass = block_mass(q, k, block_size=self.block_size, key_mask=key_mask)[0]  # (H, Nq, Nk)
        stats = row_statistics(mass[:, self.rows.to(mass.device)], **self.options)
        self.per_layer[layer] = torch.stack([stats[n].mean(-1) for n in STATISTICS]).cpu()
        return attend(q, k, v, key_mask=key_mask)


@torch.no_grad()
def attention_statistics(
    model: nn.Module,
    examples: CalibrationSet | Sequence[Example],
    *,
    block_size: int = 64,
    mask_ratio: float = 0.8,
    queries: QuerySpan = "all",
    top_frac: float = 0.1,
    coverage: float = 0.9,
    select: float = 0.3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, HeadImportance]:
    """All five attention statistics from one forward pass per example.

    Args:
        model: the transformer.
        examples: calibration examples.
        block_size: bs of the sparse plan these scores will budget.
        mask_ratio: fraction of the completion span masked (the switch-step state).
        queries: ``all`` query blocks (what the plan covers) or only those holding completion
            positions.
        top_frac, coverage, select: parameters of ``topk``, ``coverage`` and ``deficit``.
        seed: mask seed.
        progress: progress bar over examples.

    Returns:
        {statistic: HeadImportance} for every statistic in :data:`STATISTICS`.

    Raises:
        AdllmError: bad options or no examples.
    """
    if block_size < 1:
        raise AdllmError(f"block size {block_size} must be at least 1")
    if not 0.0 <= mask_ratio <= 1.0:
        raise AdllmError(f"mask ratio {mask_ratio} must be in [0, 1]")
    if queries not in ("all", "completion"):
        raise AdllmError(f"queries {queries!r} must be 'all' or 'completion'")
    for name, value in (("top_frac", top_frac), ("coverage", coverage), ("select", select)):
        if not 0.0 < value <= 1.0:
            raise AdllmError(f"{name}={value} must be in (0, 1]")
    exs = list(examples)
    if not exs:
        raise AdllmError("attention statistics need at least one calibration example")
    cfg = model.config
    if block_size > cfg.max_seq_len:  # a typo here allocated (H, Nq*bs, Nk*bs) scratch
        raise AdllmError(f"block size {block_size} exceeds the model's maximum length "
                         f"{cfg.max_seq_len}; use the sparse plan's block size (e.g. 64)")
    family = get_family(cfg.family)
    device = next(model.parameters()).device
    totals = {name: torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64) for name in STATISTICS}
    started = time.perf_counter()
    iterator: Any = exs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(exs, desc="attention statistics", unit="example")
    for i, ex in enumerate(iterator):
        ids = _switch_state(ex, i, mask_ratio=mask_ratio, mask_id=cfg.mask_id,
                            logit_shift=family.logit_shift, seed=seed)
        n_blocks = math.ceil(ex.length / block_size)
        rows = torch.ones(n_blocks, dtype=torch.bool)
        if queries == "completion":
            rows[: ex.start // block_size] = False
        hook = _StatsHook(cfg.n_layers, rows, block_size=block_size,
                          options={"top_frac": top_frac, "coverage": coverage, "select": select})
        model(ids[None].to(device), attn=hook)
        stacked = torch.stack(hook.per_layer, dim=1).double()  # (5, Ly, H)
        for j, name in enumerate(STATISTICS):
            totals[name] += stacked[j]
    settings = {"block_size": block_size, "mask_ratio": mask_ratio, "queries": queries,
                "top_frac": top_frac, "coverage": coverage, "select": select}
    data = examples.description if isinstance(examples, CalibrationSet) else {"n": len(exs)}
    elapsed = round(time.perf_counter() - started, 2)
    return {
        name: HeadImportance(
            scores=(totals[name] / len(exs)).float(), head_kind="query",
            metadata=_meta(cfg, name, {**settings, "statistic": _CONVERSION[name]}, data=data,
                           seed=seed, model=getattr(model, "source", None), elapsed_s=elapsed,
                           forward_passes=len(exs)),
        )
        for name in STATISTICS
    }


METHODS: tuple[str, ...] = ("headig", *STATISTICS, "uniform", "random")


def estimate_importance(
    model: nn.Module,
    examples: CalibrationSet | Sequence[Example] | None = None,
    *,
    method: str = "entropy",
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> HeadImportance:
    """Any estimator by name: ``headig``, one of :data:`STATISTICS`, ``uniform`` or ``random``.

    Args:
        model: the transformer (only its config for ``uniform`` / ``random``).
        examples: calibration examples (not needed for ``uniform`` / ``random``).
        method: the estimator; default ``entropy``, whose global budgets did best on the
            retrieval task at 4k/8k and on NLL (``docs/fidelity.md``).
        seed: masks / thresholds / random draw.
        progress: progress bar.
        **options: :class:`~adaptive_dllm.importance.headig.HeadIGSettings` fields plus
            ``checkpointing`` and ``resume`` for HeadIG; :func:`attention_statistics` options
            for the statistics.

    Raises:
        AdllmError: unknown method, missing data or options the method does not take.
    """
    if method not in METHODS:
        raise AdllmError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ("uniform", "random"):
        if options:
            raise AdllmError(f"importance method {method!r} takes no options, got {', '.join(options)}")
        if method == "uniform":
            return uniform_importance(model.config)
        return random_importance(model.config, seed=seed)
    if examples is None:
        raise AdllmError(f"importance method {method!r} needs calibration examples")
    if method == "headig":
        run = {k: options.pop(k) for k in ("checkpointing", "resume") if k in options}
        try:
            settings = HeadIGSettings(seed=seed, **options)
        except TypeError as err:
            raise AdllmError(f"HeadIG: {err}") from None
        return headig(model, examples, settings, progress=progress, **run)
    try:
        return attention_statistics(model, examples, seed=seed, progress=progress, **options)[method]
    except TypeError as err:
        raise AdllmError(f"{method}: {err}") from None
