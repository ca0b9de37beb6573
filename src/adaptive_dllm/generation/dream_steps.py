"""Dream's per-step arithmetic: logit alignment, filtering, proposals, confidences, commits.

Shape legend:
    B batch, L decided positions, V vocabulary, n selected positions.

Used by both loops of :mod:`~adaptive_dllm.generation.dream` (the upstream single pass and the
blocked loop); semantics and random-draw order as documented there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from adaptive_dllm.generation.cache import threshold_counts
from adaptive_dllm.generation.schedule import select_top

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.generation.dream import Algorithm, DreamOptions


def _decision_logits(logits: torch.Tensor, align: Callable[[torch.Tensor], torch.Tensor],
                     lead: int) -> torch.Tensor:
    """Model rows from ``start`` on -> rows scoring the decided positions ``start + lead`` on.

    ``lead`` is 1 when the model also returned the row just before the first decided position
    (Dream: position i reads row i-1), 0 when decisions start at position 0.
    """
    if lead == 0:
        return align(logits)
    return align(logits)[:, lead:]


def _maskable(x: torch.Tensor, mask_id: int, real: torch.Tensor | None) -> torch.Tensor:
    """(B, L) bool: mask tokens at real (non-padding) positions."""
    masked = x == mask_id
    return masked if real is None else masked & real


def _filter(logits: torch.Tensor, o: DreamOptions) -> torch.Tensor:
    """Temperature, then top-p, then top-k on (..., V) logits; removed entries get finfo.min."""
    if o.temperature > 0:
        logits = logits / o.temperature
    lowest = torch.finfo(logits.dtype).min
    if o.top_p is not None and o.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already exceed top_p (the top one stays).
        before = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], dim=-1)
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before > o.top_p)
        logits = logits.masked_fill(drop, lowest)
    if o.top_k is not None:
        k = min(o.top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, lowest)
    return logits


def _propose(probs: torch.Tensor, rows: torch.Tensor, o: DreamOptions
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposed token and its probability at every position.

    Args:
        probs: (B, L, V) float32 filtered probabilities.
        rows: (B, L) bool, the positions upstream samples (only used when temperature > 0).

    Returns:
        x0 (B, L) int64 and p(x0) (B, L) float32.
    """
    if o.temperature == 0:
        p0, x0 = probs.max(dim=-1)
        return x0, p0
    x0 = _sample_rows(probs, rows)
    return x0, probs.gather(-1, x0[..., None]).squeeze(-1)


def _sample_rows(probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, L) int64 tokens drawn from ``probs`` at ``rows`` (0 elsewhere).

    Sync exception (documented): upstream draws one categorical sample per selected position,
    in row-major order, so the draw has a data-dependent size; boolean indexing reads the count.
    """
    picked = probs[rows]  # (n, V)
    picked = picked / picked.sum(-1, keepdim=True)  # as torch.distributions.Categorical does
    tokens = torch.multinomial(picked, 1, replacement=True).squeeze(-1)  # (n,)
    return torch.zeros(rows.shape, dtype=torch.long, device=rows.device).masked_scatter(
        rows, tokens)


def _masked_count(maskable: torch.Tensor) -> int:
    """Sync exception (documented): ``origin`` draws ``torch.rand(n_masked)`` each step."""
    return int(maskable.sum())


def _confidence(probs: torch.Tensor, p0: torch.Tensor, alg: Algorithm) -> torch.Tensor:
    """(B, L) confidence of the proposals, larger = commit first."""
    if alg == "maskgit_plus":
        return p0
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values  # (B, L, 2)
        return top2[..., 0] - top2[..., 1]
    return (probs * torch.log(probs + 1e-10)).sum(-1)  # entropy: negative entropy


def _ranked_step(
    x: torch.Tensor,
    probs: torch.Tensor,
    maskable: torch.Tensor,
    k: torch.Tensor | None,
    k_max: int | None,
    o: DreamOptions,
    *,
    lead: int = 0,
) -> torch.Tensor:
    """Commit the ``k[b]`` most confident proposals of each row (maskgit_plus/margin/entropy);
    ``k`` None: threshold decoding (every proposal above ``o.threshold``, at least one).

    ``x`` holds the positions from ``lead`` on. Upstream ranks (``torch.topk``) or samples
    (``torch.multinomial``) over the full row of ``lead + N`` positions, the others at -inf.
    Both depend on the row's width, not only on its finite entries: topk's order among exact
    ties (common at low temperature with top-p: every one-token distribution has negative
    entropy 0) and multinomial's draws (one exponential per column). So the row is widened
    back to full width here; the extra columns can never be chosen.
    """
    x0, p0 = _propose(probs, maskable, o)
    confidence = torch.where(maskable, _confidence(probs, p0, o.alg), -torch.inf)  # (B, N)
    if k is None:  # threshold decoding (the blocked loop: no upstream draw order to follow)
        return torch.where(select_top(confidence, threshold_counts(confidence, o.threshold)),
                           x0, x)
    if k_max == 0:
        return x  # upstream skips the ranking (and its draws) when nothing is committed
    full = torch.nn.functional.pad(confidence, (lead, 0), value=-torch.inf)  # (B, lead + N)
    if o.alg_temp:
        picks = torch.multinomial(torch.softmax(full / o.alg_temp, dim=-1), k_max)
    else:
        picks = full.topk(k_max, dim=-1).indices  # (B, k_max), best first
    # Rows that commit fewer than k_max (padding changes their mask count) keep the first k[b].
    keep = torch.arange(k_max, device=x.device)[None, :] < k[:, None]  # (B, k_max)
    chosen = torch.zeros_like(full, dtype=torch.bool).scatter(-1, picks, keep)[:, lead:]
    return torch.where(chosen, x0, x)


def _origin_step(
    x: torch.Tensor,
    probs: torch.Tensor,
    maskable: torch.Tensor,
    reveal_p: torch.Tensor,
    o: DreamOptions,
) -> torch.Tensor:
    """Reveal each masked position with probability ``reveal_p`` (0-d), taking its proposal."""
    draws = torch.rand(_masked_count(maskable), device=x.device)  # (n_masked,) row-major
    reveal = torch.zeros_like(maskable).masked_scatter(maskable, draws < reveal_p)
    x0, _ = _propose(probs, reveal, o)
    return torch.where(reveal, x0, x)
