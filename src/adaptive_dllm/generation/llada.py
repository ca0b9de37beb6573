"""LLaDA's sampler: semi-autoregressive blocks with low-confidence or random remasking.

Shape legend:
    B batch, P prompt length (left-padded), G generation length, L = P + G, V vocabulary.

The generated region starts as mask tokens and is split into ``G / block_length`` blocks
decoded left to right, each with ``steps / num_blocks`` steps (Nie et al. 2025, Alg. 4).
At every step the model scores the whole sequence; each masked position of the current
block proposes its argmax token (Gumbel-max in float64 when ``temperature > 0``) and the
row's most confident proposals, as many as the step's transfer count, are committed.
Semantics and random-draw order follow the recorded upstream sampler exactly
(``../shared/reference_fixtures/README.md``), so seeds mean the same thing.

Sampler arithmetic (CFG, softmax) runs in float32 and the Gumbel noise in float64: identical to
upstream for float32 models, more precise than upstream's model-dtype arithmetic for bf16/fp16.

The step loop never reads a tensor back to the host: transfer counts are known before the
loop and selection uses :func:`~adaptive_dllm.generation.schedule.select_top`. One documented
exception: with ``threshold`` (parallel decoding) a block ends when it holds no mask token, which
is read once per step (:func:`~adaptive_dllm.generation.block_loop.walk_blocks`).

``cache`` (``"prefix"`` / ``"dual"``) runs every block's first step as a full forward that
refreshes the K/V cache and the block's other steps on a window only
(:mod:`~adaptive_dllm.generation.cache`); it is approximate by design (Fast-dLLM).
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
    threshold_counts,
)
from adaptive_dllm.generation.schedule import (
    StepSession,
    select_top,
    split_evenly,
)
from adaptive_dllm.generation.step_graph import call_model, step_runner

Remasking = Literal["low_confidence", "random"]
# LLaDA-8B's <|eot_id|>: no config field carries it; used only when the vocabulary reaches it.
LLADA_EOT_ID = 126348
# Rank of a proposal that must come last: below every probability, but finite so that a step
# which has to commit it still can (select_top never picks -inf ahead of finite scores).
_LAST = -1e30


@dataclass(frozen=True)
class LladaOptions:
    """Settings of the LLaDA sampler.

    Attributes:
        gen_length: tokens to generate (G).
        steps: denoising steps in total; None = ``gen_length`` (one token per step, as the
            upstream defaults 128/128). Must be a multiple of the number of blocks.
        block_length: semi-autoregressive block size; None = ``gen_length`` (one block).
            Must divide ``gen_length``.
        temperature: 0 = argmax; > 0 samples by Gumbel-max in float64,
            ``exp(logits) / (-log U) ** temperature``.
        cfg_scale: classifier-free guidance; > 0 runs the prompt-masked copy in the same
            forward and uses ``uncond + (cfg_scale + 1) * (cond - uncond)``.
        remasking: ``low_confidence`` commits the highest softmax probabilities of the
            proposed tokens; ``random`` ranks by one ``torch.rand((B, L))`` draw per step.
        cache: None, ``"prefix"`` or ``"dual"``: the approximate K/V cache
            (:mod:`~adaptive_dllm.generation.cache`).
        threshold: None or tau > 0: parallel decoding (every masked token of the block above
            tau, at least one per step); ``steps`` then does not apply and must stay unset.
        logits_eos_inf, confidence_eos_eot_inf: upstream's EOS/EOT suppression switches.
        cuda_graphs: with a cache on a CUDA device, replay each block's cached steps from a
            CUDA graph (:mod:`~adaptive_dllm.generation.step_graph`; same tokens, fewer
            launches). No effect without a cache or off CUDA.
    """

    gen_length: int = 128
    steps: int | None = None
    block_length: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: Remasking = "low_confidence"
    cache: CacheMode | None = None
    threshold: float | None = None
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        check_int("gen_length", self.gen_length)
        check_cache("cache", self.cache)
        for name in ("logits_eos_inf", "confidence_eos_eot_inf", "cuda_graphs"):
            check_bool(name, getattr(self, name))
        if self.threshold is not None:
            check_float("threshold", self.threshold, low=0.0, low_open=True)
            clash = threshold_clashes({"steps": self.steps, "gen_length": self.gen_length,
                                       "remasking": self.remasking})
            if "steps" in clash:
                raise AdllmError(f"steps={self.steps} does not apply with threshold (each block "
                                 "runs until it is unmasked); leave steps unset")
            if clash:
                raise AdllmError("threshold compares model confidences: it needs "
                                 "remasking='low_confidence'")
        if self.steps is None:
            object.__setattr__(self, "steps", self.gen_length)
        if self.block_length is None:
            object.__setattr__(self, "block_length", self.gen_length)
        check_int("steps", self.steps)
        check_int("block_length", self.block_length)
        check_float("temperature", self.temperature, low=0.0)
        check_float("cfg_scale", self.cfg_scale, low=0.0)
        check_choice("remasking", self.remasking, get_args(Remasking))
        if self.gen_length % self.block_length:
            raise AdllmError(
                f"gen_length={self.gen_length} is not divisible by block_length="
                f"{self.block_length}; pick a block length that divides it"
            )
        if self.steps % self.num_blocks:
            raise AdllmError(
                f"steps={self.steps} is not a multiple of the number of blocks "
                f"(gen_length / block_length = {self.num_blocks}); use a multiple of it"
            )

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


def sample_llada(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    options: LladaOptions,
    attention_mask: torch.Tensor | None = None,
    session: StepSession | None = None,
    on_step: Callable[[int, int], None] | None = None,
    history: list[torch.Tensor] | None = None,
    counts: LoopCounts | None = None,
) -> torch.Tensor:
    """Generate ``options.gen_length`` tokens after each prompt.

    Args:
        model: returns (B, L - s, V) logits from
            ``model(ids, attention_mask=..., attn=..., logits_from=s)``;
            ``model.config.mask_id`` is the mask token.
        input_ids: (B, P) int64 prompts, left-padded when rows differ in length.
        options: sampler settings.
        attention_mask: (B, P) bool or 0/1, 0 at left padding; None = no padding. Padded
            positions are never masked, never chosen and never read by real tokens.
        session: passed to the model as ``attn``; ``begin_step(step, steps)`` is called before
            each step's (single) model call. With a cache, wrap it first
            (:func:`~adaptive_dllm.generation.cached_sparse.wrap_session`): it then sees
            ``begin_step(block, num_blocks)`` before every refresh forward only.
        on_step: ``on_step(done, steps)`` after each step, ``done`` = steps completed (with
            ``threshold``, ``steps`` is the most the loop can take).
        history: if given, receives a copy of the sequence before every model call and the
            final sequence (``forwards + 1`` tensors of shape (B, L)).
        counts: if given, filled with the forwards and refreshes the loop ran.

    Returns:
        (B, L) int64: prompts followed by the generated tokens.
    """
    o = options
    mask_id = model.config.mask_id
    B, P = input_ids.shape
    device = input_ids.device
    x = torch.cat([input_ids, input_ids.new_full((B, o.gen_length), mask_id)], dim=1)  # (B, L)
    model_mask = None
    if attention_mask is not None:
        gen_ones = torch.ones(B, o.gen_length, dtype=torch.bool, device=device)
        model_mask = torch.cat([attention_mask.bool(), gen_ones], dim=1)  # (B, L)
    uncond_positions = None
    if o.cfg_scale > 0:
        # The unconditional copy masks the real prompt tokens (padding stays padding).
        uncond_positions = torch.zeros_like(x, dtype=torch.bool)
        uncond_positions[:, :P] = True if attention_mask is None else attention_mask.bool()
        if model_mask is not None:
            model_mask = torch.cat([model_mask, model_mask], dim=0)  # (2B, L)
    # Every block is fully masked when it starts, so its counts are known now: (B, S_block).
    block_n = torch.full((B,), o.block_length, dtype=torch.long, device=device)
    schedule = split_evenly(block_n, o.steps_per_block)
    counts = LoopCounts() if counts is None else counts
    cache = None if o.cache is None else BlockCache(o.cache, model.config.n_layers, x.shape[1])
    run = step_runner(o.cuda_graphs, cache, device, counts)
    for s in walk_blocks(x, start=P, width=o.block_length, options=o, mask_id=mask_id,
                         cache=cache, session=session, counts=counts, history=history,
                         on_step=on_step):
        _step(model, x, lo=s.lo, hi=s.hi, k=None if o.threshold is not None else schedule[:, s.j],
              options=o, mask_id=mask_id, model_mask=model_mask,
              uncond_positions=uncond_positions, session=session, cache=cache, run=run)
    return x



def _step(
    model: nn.Module,
    x: torch.Tensor,
    *,
    lo: int,
    hi: int,
    k: torch.Tensor,
    options: LladaOptions,
    mask_id: int,
    model_mask: torch.Tensor | None,
    uncond_positions: torch.Tensor | None,
    session: StepSession | None,
    cache: BlockCache | None = None,
    run: Callable[..., torch.Tensor] = call_model,
) -> None:
    """One denoising step: commit ``k[b]`` tokens of block ``x[:, lo:hi]`` in place (k None:
    threshold decoding)."""
    o = options
    # Only the current block is decided: the model skips the output head before it, and only
    # the block's rows are converted and combined.
    width = hi - lo
    inputs = x if uncond_positions is None else torch.cat(
        [x, torch.where(uncond_positions, mask_id, x)])  # (B or 2B, L)
    start = 0
    extra = {}
    if cache is not None:
        extra["cache"] = cache  # only then: models without a cache hook keep working
        if cache.window is not None:
            start, stop = cache.window
            inputs = inputs[:, start:stop]  # the cached step computes its window only
    out = run(model, inputs, attention_mask=model_mask, attn=session, logits_from=lo - start,
              **extra)
    if uncond_positions is None:
        logits = out[:, :width].float()  # (B, Lb, V)
    else:
        cond, unc = out[:, :width].float().chunk(2, dim=0)
        logits = unc + (o.cfg_scale + 1) * (cond - unc)  # (B, Lb, V)
    config = model.config
    if o.logits_eos_inf and config.eos_id is not None:
        logits[..., config.eos_id] = -torch.inf

    if o.temperature > 0:
        # Drawn over the whole (B, L, V), as upstream, so the random stream matches.
        u = torch.rand((*x.shape, logits.shape[-1]), dtype=torch.float64, device=x.device)
        noisy = logits.double().exp() / (-torch.log(u[:, lo:hi])) ** o.temperature
        x0 = noisy.argmax(-1)  # (B, Lb)
    else:
        x0 = logits.argmax(-1)

    if o.remasking == "low_confidence":
        probs = torch.softmax(logits, dim=-1)
        confidence = probs.gather(-1, x0[..., None]).squeeze(-1)  # (B, Lb)
    else:
        confidence = torch.rand(x.shape, device=x.device)[:, lo:hi]

    if o.confidence_eos_eot_inf:
        for special in _end_ids(config):
            confidence = torch.where(x0 == special, _LAST, confidence)
    current = x[:, lo:hi]
    confidence = torch.where(current == mask_id, confidence, -torch.inf)
    if k is None:
        k = threshold_counts(confidence, o.threshold)
    chosen = select_top(confidence, k)
    x[:, lo:hi] = torch.where(chosen, x0, current)


def _end_ids(config: object) -> tuple[int, ...]:
    """EOS, plus LLaDA-8B's EOT when the vocabulary holds it."""
    ids = [] if config.eos_id is None else [config.eos_id]
    if config.vocab_size > LLADA_EOT_ID:
        ids.append(LLADA_EOT_ID)
    return tuple(ids)
