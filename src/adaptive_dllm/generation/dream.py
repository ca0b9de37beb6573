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

**Blocks, cache, threshold** (options ``block_length``, ``cache``, ``threshold``; all off by
default, and then the loop above runs unchanged). With any of them the generation is decoded in
semi-autoregressive blocks as LLaDA's: each block gets ``steps / num_blocks`` steps whose counts
follow the same noise schedule over the block's masked positions, only the block's positions are
decided (prompt mask tokens are not infilled), and ``cache`` / ``threshold`` mean what they mean
for LLaDA (:mod:`~adaptive_dllm.generation.cache`). A cached step's window starts one position
before the block, whose row decides the block's first token.

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

from adaptive_dllm._checks import check_bool, check_choice, check_float, check_int
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation.block_loop import walk_blocks
from adaptive_dllm.generation.cache import (
    BlockCache,
    CacheMode,
    LoopCounts,
    check_cache,
    threshold_clashes,
)
from adaptive_dllm.generation.dream_steps import (  # noqa: F401 - tests reach them here
    _confidence,
    _decision_logits,
    _filter,
    _maskable,
    _masked_count,
    _origin_step,
    _propose,
    _ranked_step,
    _sample_rows,
)
from adaptive_dllm.generation.schedule import (
    StepSession,
    dream_counts,
    dream_timesteps,
)
from adaptive_dllm.generation.step_graph import step_runner
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
        block_length: None = one pass over the whole generation (upstream); else decode in
            semi-autoregressive blocks of this size (must divide ``gen_length``; ``steps`` must
            be a multiple of the number of blocks).
        cache: None, ``"prefix"`` or ``"dual"`` (blocks of ``block_length``, or one block).
        threshold: None or tau > 0: parallel decoding as LLaDA's (ranked algorithms, no
            ``alg_temp``); ``steps`` then does not apply and must stay unset.
        cuda_graphs: with a cache on a CUDA device, replay each block's cached steps from a
            CUDA graph (:mod:`~adaptive_dllm.generation.step_graph`; same tokens, fewer
            launches). No effect without a cache or off CUDA.
    """

    gen_length: int = 128
    steps: int | None = None
    alg: Algorithm = "maskgit_plus"
    eps: float = 1e-3
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    block_length: int | None = None
    cache: CacheMode | None = None
    threshold: float | None = None
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        check_int("gen_length", self.gen_length)
        check_cache("cache", self.cache)
        check_bool("cuda_graphs", self.cuda_graphs)
        if self.threshold is not None:
            check_float("threshold", self.threshold, low=0.0, low_open=True)
            clash = threshold_clashes({"steps": self.steps, "gen_length": self.gen_length,
                                       "alg": self.alg, "alg_temp": self.alg_temp})
            if "steps" in clash:
                raise AdllmError(f"steps={self.steps} does not apply with threshold (each block "
                                 "runs until it is unmasked); leave steps unset")
            if clash:
                raise AdllmError("threshold needs a ranked alg (maskgit_plus, topk_margin, "
                                 "entropy) without alg_temp")
        if self.steps is None:
            object.__setattr__(self, "steps", self.gen_length)
        check_int("steps", self.steps)
        if self.block_length is not None:
            check_int("block_length", self.block_length)
            if self.gen_length % self.block_length:
                raise AdllmError(f"gen_length={self.gen_length} is not divisible by "
                                 f"block_length={self.block_length}; pick one that divides it")
            if self.steps % self.num_blocks:
                raise AdllmError(f"steps={self.steps} is not a multiple of the number of blocks "
                                 f"({self.num_blocks}); use a multiple of it")
        check_choice("alg", self.alg, get_args(Algorithm))
        check_float("eps", self.eps, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float("temperature", self.temperature, low=0.0)
        if self.top_p is not None:
            check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        if self.top_k is not None:
            check_int("top_k", self.top_k)
        if self.alg_temp is not None:
            check_float("alg_temp", self.alg_temp, low=0.0)

    @property
    def blocked(self) -> bool:
        """Whether the blocked loop runs (block_length, cache or threshold given)."""
        return not (self.block_length is None and self.cache is None and self.threshold is None)

    @property
    def num_blocks(self) -> int:
        return 1 if self.block_length is None else self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


def sample_dream(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    options: DreamOptions,
    attention_mask: torch.Tensor | None = None,
    session: StepSession | None = None,
    on_step: Callable[[int, int], None] | None = None,
    history: list[torch.Tensor] | None = None,
    counts: LoopCounts | None = None,
) -> torch.Tensor:
    """Generate ``options.gen_length`` tokens after each prompt.

    Prompt mask tokens are infilled, as upstream (not by the blocked loop: module docstring).

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
            final sequence (``forwards + 1`` tensors of shape (B, L)).
        counts: if given, filled with the forwards and refreshes the loop ran.

    Returns: (B, L) int64: prompts followed by the generated tokens.
    """
    o, tally = options, LoopCounts() if counts is None else counts
    if o.blocked:
        return _sample_blocks(model, input_ids, o, attention_mask, session, on_step, history, tally)
    mask_id = model.config.mask_id
    align = get_family(model.config.family).align_logits
    B, P = input_ids.shape
    device = input_ids.device
    x, real = _start(input_ids, attention_mask, o.gen_length, mask_id)

    # Positions before `lo` hold no mask token and are never decided, so the sampler's
    # softmax / filtering skips them (the prompt when it has no mask ids, i.e. no infilling).
    prompt_real = None if attention_mask is None else attention_mask.bool()
    lo = 0 if bool(_maskable(input_ids, mask_id, prompt_real).any()) else P
    region_real = None if real is None else real[:, lo:]

    timesteps = dream_timesteps(o.steps, o.eps)  # (S + 1,) CPU float32
    if o.alg == "origin":
        reveal_p = _reveal_probs(timesteps, device)
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
        x[:, lo:] = region  # in place, as the blocked loop: no new (B, L) per step
        tally.count(refresh=True)
        if on_step is not None:
            on_step(i + 1, o.steps)
    tally.block_steps.append(o.steps)
    if history is not None:
        history.append(x.clone())
    return x


def _reveal_probs(timesteps: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(S,) ``origin``'s reveal probability per step, ``1 - s/t``; the last step reveals all."""
    reveal_p = 1 - timesteps[1:] / timesteps[:-1]
    reveal_p[-1] = 1.0
    return reveal_p.to(device)


def _start(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, gen_length: int,
           mask_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, L) prompts followed by mask tokens, and (B, L) bool real positions (None = all)."""
    B = input_ids.shape[0]
    x = torch.cat([input_ids, input_ids.new_full((B, gen_length), mask_id)], dim=1)
    if attention_mask is None:
        return x, None
    gen_ones = torch.ones(B, gen_length, dtype=torch.bool, device=input_ids.device)
    return x, torch.cat([attention_mask.bool(), gen_ones], dim=1)


def _sample_blocks(model: nn.Module, input_ids: torch.Tensor, o: DreamOptions,
                   attention_mask: torch.Tensor | None, session: StepSession | None,
                   on_step: Callable[[int, int], None] | None,
                   history: list[torch.Tensor] | None, counts: LoopCounts) -> torch.Tensor:
    """The blocked loop (block_length / cache / threshold): see the module docstring."""
    mask_id = model.config.mask_id
    family = get_family(model.config.family)
    lead = 1 if family.logit_shift else 0  # rows before the block that decide its tokens
    B, P = input_ids.shape
    device = input_ids.device
    x, real = _start(input_ids, attention_mask, o.gen_length, mask_id)
    width = o.gen_length // o.num_blocks
    timesteps = dream_timesteps(o.steps_per_block, o.eps)
    block_counts = None
    if o.alg != "origin":  # every block starts fully masked: one schedule for all blocks
        block_counts = dream_counts(torch.full((B,), width, device=device), timesteps)
        k_max = block_counts.amax(0).tolist()  # read once, before the loop
    else:
        reveal_p = _reveal_probs(timesteps, device)
    cache = None if o.cache is None else BlockCache(o.cache, model.config.n_layers, x.shape[1])
    run = step_runner(o.cuda_graphs, cache, device, counts)
    for s in walk_blocks(x, start=P, width=width, options=o, mask_id=mask_id, cache=cache,
                         session=session, counts=counts, history=history, on_step=on_step,
                         lead=lead):
        start = 0
        inputs = x
        extra = {} if cache is None else {"cache": cache}
        if cache is not None and cache.window is not None:
            start, stop = cache.window
            inputs = x[:, start:stop]
        out = run(model, inputs, attention_mask=real, attn=session,
                  logits_from=s.lo - lead - start, **extra)
        logits = _decision_logits(out, family.align_logits, lead)[:, :width]
        probs = torch.softmax(_filter(logits.float(), o), dim=-1)  # (B, Lb, V)
        region = x[:, s.lo:s.hi]
        maskable = region == mask_id
        if o.alg == "origin":
            region = _origin_step(region, probs, maskable, reveal_p[s.j], o)
        else:
            k = None if o.threshold is not None else block_counts[:, s.j]
            region = _ranked_step(region, probs, maskable, k,
                                  None if k is None else k_max[s.j], o)
        x[:, s.lo:s.hi] = region
    return x
