"""Dream's sampler: confidence-ranked (maskgit_plus, topk_margin, entropy) or random (origin).

Shape legend:
    B batch, P prompt length (left-padded), G generation length, L = P + G, V vocabulary,
    S steps.

The prompt is followed by ``G`` mask tokens. Step i goes from noise level t = timesteps[i] to
s = timesteps[i+1] (``linspace(1, eps, S + 1)``). The model's logits are shifted one position
(Dream is AR-initialised: its output at i-1 predicts token i) and, at masked positions only,
filtered (top-p, then top-k), turned into probabilities and proposals. ``origin`` reveals each
masked position with probability ``1 - s/t`` (Austin et al. 2021); the ranked algorithms commit
the row's most confident proposals, ``trunc(m * (1 - s/t))`` of the ``m`` still masked (Ye et al.
2025, Dream 7B). Semantics and random-draw order follow the recorded upstream sampler exactly
(``../shared/reference_fixtures/README.md``).

Sampler arithmetic (filtering, softmax, confidences) runs in float32: identical to upstream for
float32 models, more precise than upstream's model-dtype arithmetic for bf16/fp16.

Host synchronisation: none in the step loop at ``temperature == 0`` with a ranked algorithm.
Two documented exceptions keep upstream's random stream, whose draw sizes depend on the data:
``origin`` draws ``torch.rand(n_masked)`` per step, and ``temperature > 0`` samples only the
masked (or revealed) positions. Both are isolated in :func:`_masked_count` and
:func:`_sample_rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from adaptive_dllm._checks import check_choice, check_float, check_int
from adaptive_dllm.generation.schedule import (
    StepSession,
    dream_counts,
    dream_timesteps,
)
from adaptive_dllm.models.families import get_family

Algorithm = Literal["origin", "maskgit_plus", "topk_margin", "entropy"]


@dataclass(frozen=True)
class DreamOptions:
    """Settings of the Dream sampler.

    Attributes:
        gen_length: tokens to generate (upstream ``max_new_tokens``).
        steps: denoising steps; None = ``gen_length``. Any value >= 1 works (a step may
            commit nothing, e.g. the first of 16 steps over 16 masks).
        alg: ``maskgit_plus`` (top-1 probability; of the sampled token when temperature > 0),
            ``topk_margin`` (top-1 minus top-2 probability), ``entropy`` (negative entropy),
            or ``origin`` (random reveal, no ranking). Default ``maskgit_plus``, the upstream
            demo's choice, which is deterministic at temperature 0 (upstream's config default
            ``origin`` consumes random numbers even then).
        eps: final noise level, 0 < eps < 1.
        temperature: 0 = most probable token; > 0 samples from ``softmax(logits / temperature)``.
        top_p: nucleus filtering (applied only when < 1); None = off.
        top_k: keep the k largest logits; None = off. Upstream silently used top_k=50 when
            the caller passed none (a legacy config default leaking in); here None means no
            filtering, and ``top_k=50`` reproduces upstream's implicit behaviour.
        alg_temp: > 0 picks the positions to commit by sampling from
            ``softmax(confidence / alg_temp)`` instead of taking the top ones; None or 0 = off.
    """

    gen_length: int = 128
    steps: int | None = None
    alg: Algorithm = "maskgit_plus"
    eps: float = 1e-3
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None

    def __post_init__(self) -> None:
        check_int("gen_length", self.gen_length)
        if self.steps is None:
            object.__setattr__(self, "steps", self.gen_length)
        check_int("steps", self.steps)
        check_choice("alg", self.alg, get_args(Algorithm))
        check_float("eps", self.eps, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float("temperature", self.temperature, low=0.0)
        if self.top_p is not None:
            check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        if self.top_k is not None:
            check_int("top_k", self.top_k)
        if self.alg_temp is not None:
            check_float("alg_temp", self.alg_temp, low=0.0)


def sample_dream(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    options: DreamOptions,
    attention_mask: torch.Tensor | None = None,
    session: StepSession | None = None,
    on_step: Callable[[int, int], None] | None = None,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate ``options.gen_length`` tokens after each prompt.

    Mask tokens inside a prompt are filled too (infilling), as upstream.

    Args:
        model: returns (B, L - s, V) logits from
            ``model(ids, attention_mask=..., attn=..., logits_from=s)``;
            ``model.config`` gives the mask id and the family (for the logit shift).
        input_ids: (B, P) int64 prompts, left-padded when rows differ in length.
        options: sampler settings.
        attention_mask: (B, P) bool or 0/1, 0 at left padding; None = no padding. Padded
            positions are never masked, never chosen and never read by real tokens.
        session: passed to the model as ``attn``; ``begin_step(i, steps)`` before each call.
        on_step: ``on_step(done, steps)`` after each step, ``done`` = steps completed.
        history: if given, receives a copy of the sequence before every model call and the
            final sequence (``steps + 1`` tensors of shape (B, L)).

    Returns:
        (B, L) int64: prompts followed by the generated tokens.
    """
    o = options
    mask_id = model.config.mask_id
    align = get_family(model.config.family).align_logits
    B, P = input_ids.shape
    device = input_ids.device
    x = torch.cat([input_ids, input_ids.new_full((B, o.gen_length), mask_id)], dim=1)  # (B, L)
    real = None
    if attention_mask is not None:
        gen_ones = torch.ones(B, o.gen_length, dtype=torch.bool, device=device)
        real = torch.cat([attention_mask.bool(), gen_ones], dim=1)  # (B, L)

    # Positions before `lo` hold no mask token and are never decided, so the sampler's
    # softmax / filtering skips them (the prompt when it has no mask ids, i.e. no infilling).
    prompt_real = None if attention_mask is None else attention_mask.bool()
    lo = 0 if bool(_maskable(input_ids, mask_id, prompt_real).any()) else P
    region_real = None if real is None else real[:, lo:]

    timesteps = dream_timesteps(o.steps, o.eps)  # (S + 1,) CPU float32
    if o.alg == "origin":
        reveal_p = 1 - timesteps[1:] / timesteps[:-1]
        reveal_p[-1] = 1.0  # everything left is revealed on the last step
        reveal_p = reveal_p.to(device)  # (S,)
    else:
        counts = dream_counts(_maskable(x, mask_id, real).sum(-1), timesteps)  # (B, S)
        # torch.topk / torch.multinomial take a host-side count per step; read once, here.
        k_max = counts.amax(0).tolist()

    for i in range(o.steps):
        if session is not None:
            session.begin_step(i, o.steps)
        if history is not None:
            history.append(x.clone())
        region = x[:, lo:]  # (B, L - lo)
        maskable = _maskable(region, mask_id, region_real)
        start = max(lo - 1, 0)  # Dream decides position i from row i-1
        out = model(x, attention_mask=real, attn=session, logits_from=start)
        logits = _decision_logits(out, align, lo - start)
        probs = torch.softmax(_filter(logits.float(), o), dim=-1)  # (B, L - lo, V)
        if o.alg == "origin":
            region = _origin_step(region, probs, maskable, reveal_p[i], o)
        else:
            region = _ranked_step(region, probs, maskable, counts[:, i], k_max[i], o, lead=lo)
        x = torch.cat([x[:, :lo], region], dim=1)
        if on_step is not None:
            on_step(i + 1, o.steps)
    if history is not None:
        history.append(x.clone())
    return x


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
    k: torch.Tensor,
    k_max: int,
    o: DreamOptions,
    *,
    lead: int,
) -> torch.Tensor:
    """Commit the ``k[b]`` most confident proposals of each row (maskgit_plus/margin/entropy).

    ``x`` holds the positions from ``lead`` on. Upstream ranks (``torch.topk``) or samples
    (``torch.multinomial``) over the full row of ``lead + N`` positions, the others at -inf.
    Both depend on the row's width, not only on its finite entries: topk's order among exact
    ties (common at low temperature with top-p: every one-token distribution has negative
    entropy 0) and multinomial's draws (one exponential per column). So the row is widened
    back to full width here; the extra columns can never be chosen.
    """
    x0, p0 = _propose(probs, maskable, o)
    confidence = torch.where(maskable, _confidence(probs, p0, o.alg), -torch.inf)  # (B, N)
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
