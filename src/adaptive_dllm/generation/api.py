"""``generate``: prompts in, tokens, text and timings out, for every model family.

Shape legend:
    B batch, P prompt length (after left padding), G generation length.

The family's ``sampler`` picks the loop (:mod:`~adaptive_dllm.generation.llada` or
:mod:`~adaptive_dllm.generation.dream`); its keyword options are that loop's option dataclass
(:class:`LladaOptions`, :class:`DreamOptions`). Prompts of different lengths are left-padded and
masked (:mod:`~adaptive_dllm.generation.prompts`), so a batch generates what its rows
generate one by one.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from adaptive_dllm._checks import check_seed
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation.cache import LoopCounts
from adaptive_dllm.generation.dream import DreamOptions, sample_dream
from adaptive_dllm.generation.llada import LladaOptions, sample_llada
from adaptive_dllm.generation.prompts import (
    Prompt,
    decode,
    encode_prompt,
    is_flat_ids,
    tokenizer_eos_id,
)
from adaptive_dllm.generation.schedule import StepSession
from adaptive_dllm.generation.stats import GenerationStats, StepClock
from adaptive_dllm.models.checks import checked_first_forward
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.models.families import get_family
from adaptive_dllm.sparsity.config import SparseConfig
from adaptive_dllm.sparsity.session import build_session

logger = logging.getLogger(__name__)

__all__ = ["GenerationOutput", "Prompt", "SparseSpec", "decode", "generate", "make_options"]


_SAMPLERS = {"llada": (LladaOptions, sample_llada), "dream": (DreamOptions, sample_dream)}
# Upstream argument names that are spelled differently here.
_RENAMED = {"max_new_tokens": "gen_length", "sampling_alg": "alg", "mask_id": None,
            "mask_token_id": None}


class SparseSpec(Protocol):
    """Another kind of ``generate(sparse=...)``: a factory of per-generation sessions (tests,
    custom attention). A :class:`~adaptive_dllm.sparsity.config.SparseConfig` needs none:
    :func:`generate` builds its session directly, with the generation length and LLaDA's block
    starts."""

    def new_session(self, model_config: ModelConfig, total_steps: int) -> StepSession: ...


@dataclass(frozen=True)
class GenerationOutput:
    """Result of :func:`generate`.

    Attributes:
        ids: (B, G) int64 generated tokens only (raw, mask and EOS ids included).
        sequences: (B, P + G) int64 prompts (left-padded) followed by the generated tokens.
        text: decoded generation, cut at the first EOS with mask ids dropped; a ``str`` when
            one prompt was given (str, list of ints, 1-D tensor), a list for a batch, None
            without a tokenizer.
        stats: timings, sizes, cache counts and the sparse session's stats
            (:class:`~adaptive_dllm.generation.stats.GenerationStats`; ``stats["key"]`` reads
            its JSON form).
        history: with ``output_history=True``, (forwards + 1, B, G) int64: the generated
            region before every forward, then the final tokens; else None.
    """

    ids: torch.Tensor
    sequences: torch.Tensor
    text: str | list[str] | None
    stats: GenerationStats
    history: torch.Tensor | None = None


def make_options(family: str, **options: Any) -> LladaOptions | DreamOptions:
    """The option dataclass of ``family``'s sampler, validated.

    Raises:
        AdllmError: an option that sampler does not have (the message lists the valid ones),
            or an invalid value.
    """
    sampler = get_family(family).sampler
    cls = _SAMPLERS[sampler][0]
    if "max_new_tokens" in options:  # upstream's (and transformers') name, accepted as an alias
        if "gen_length" in options:
            raise AdllmError("give gen_length or max_new_tokens (an alias of it), not both")
        options["gen_length"] = options.pop("max_new_tokens")
    valid = [f.name for f in dataclasses.fields(cls)]
    for name in options:
        if name not in valid:
            hint = ""
            if _RENAMED.get(name):
                hint = f" (upstream's {name} is called {_RENAMED[name]} here)"
            elif name in _RENAMED:
                hint = " (it comes from the model config)"
            raise AdllmError(
                f"option {name!r} is not valid for the {sampler} sampler{hint}; valid options: "
                f"{', '.join(valid)}"
            )
    return cls(**options)


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: Prompt,
    *,
    sparse: SparseConfig | SparseSpec | None = None,
    chat: bool = False,
    seed: int | None = None,
    attention_mask: torch.Tensor | Sequence[Sequence[int]] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    output_history: bool = False,
    **options: Any,
) -> GenerationOutput:
    """Generate a continuation of one prompt or a batch of prompts.

    Args:
        model: a :class:`~adaptive_dllm.models.transformer.Transformer` (or anything with its
            call signature and a :class:`~adaptive_dllm.models.config.ModelConfig` ``config``).
        tokenizer: the model's tokenizer, or None (then prompts must be token ids).
        prompt: a string, a list of strings (tokenised and left-padded with the pad id), a list
            of token ids, a list of such lists (left-padded), or an int64 tensor (B, P) / (P,).
        sparse: None for dense attention, a :class:`~adaptive_dllm.sparsity.config.SparseConfig`
            (its session is built here, told the generation length and LLaDA's block starts),
            or any object whose ``new_session(config, steps)`` returns the attention session
            used for this generation (see :class:`~adaptive_dllm.generation.schedule.StepSession`).
        chat: wrap each string prompt in the tokenizer's chat template (one user turn).
        seed: ``torch.manual_seed(seed)`` right before the denoising loop.
        attention_mask: (B, P) 0/1 for a pre-padded tensor or list-of-lists prompt, 0 at the
            left padding; built automatically for lists of different lengths.
        on_step: progress callback ``on_step(done, total)`` after every denoising step.
        output_history: also return every step's generated tokens (``GenerationOutput.history``).
        **options: the sampler's options, e.g. ``steps``, ``gen_length``, ``block_length``,
            ``temperature``, ``cfg_scale``, ``remasking`` (LLaDA) or ``alg``, ``eps``,
            ``top_p``, ``top_k``, ``alg_temp`` (Dream), ``cache`` and ``threshold`` (both);
            ``max_new_tokens`` is an alias of ``gen_length``; see :class:`LladaOptions` and
            :class:`DreamOptions` for meanings and defaults.

    Returns:
        A :class:`GenerationOutput`.

    Raises:
        AdllmError: unknown or invalid option, empty or malformed prompt, text without a
            tokenizer, prompt plus generation longer than the model's maximum length, a model
            without a ModelConfig, a ``sparse`` without ``new_session``, a seed outside
            [0, 2**64).
    """
    config = _model_config(model)
    if sparse is not None and not hasattr(sparse, "new_session"):
        raise AdllmError(f"sparse={sparse!r} is neither a SparseConfig nor an object with "
                         "new_session(config, steps); pass for example SparseConfig(select=0.3) "
                         "(uniform) or SparseConfig(select=0.3, importance=...) (adaptive)")
    if seed is not None:
        seed = check_seed(seed)
    family = get_family(config.family)
    opts = make_options(config.family, **options)
    sample = _SAMPLERS[family.sampler][1]
    single = isinstance(prompt, str) or is_flat_ids(prompt)
    input_ids, mask = encode_prompt(prompt, tokenizer, config, chat=chat, attention_mask=attention_mask)
    B, P = input_ids.shape
    _check_fits(P, opts.gen_length, config.max_seq_len)
    device = _model_device(model, input_ids)
    input_ids = input_ids.to(device)
    mask = None if mask is None else mask.to(device)
    session = None if sparse is None else _new_session(sparse, config, opts)
    counts = LoopCounts()
    history: list[torch.Tensor] | None = [] if output_history else None
    grid_note = None if session is None else _block_grid_note(mask)

    if seed is not None:
        torch.manual_seed(seed)
    sequences, step_s, total_s = _run_timed(
        lambda step_done: sample(checked_first_forward(model), input_ids, options=opts,
                                 attention_mask=mask, session=session, on_step=step_done,
                                 history=history, counts=counts),
        device, on_step)

    ids = sequences[:, P:]
    stats = _generation_stats(family.sampler, opts, counts, B, P, step_s, total_s,
                              sparse=None if session is None else session.stats(),
                              batch_note=grid_note)
    text = None
    if tokenizer is not None:
        texts = decode(tokenizer, ids, eos_id=tokenizer_eos_id(tokenizer, config), mask_id=config.mask_id)
        text = texts[0] if single else texts
    steps = None if history is None else torch.stack(history)[:, :, P:]
    return GenerationOutput(ids=ids, sequences=sequences, text=text, stats=stats, history=steps)


def _model_config(model: Any) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        hint = f"ad.load({model!r})" if isinstance(model, str) else "ad.load(...)"
        raise AdllmError(f"model must be a loaded model (with a ModelConfig .config), got "
                         f"{type(model).__name__}; load one with {hint}")
    return config


def _check_fits(prompt_length: int, gen_length: int, max_seq_len: int) -> None:
    if prompt_length + gen_length > max_seq_len:
        raise AdllmError(
            f"prompt of {prompt_length} tokens + gen_length {gen_length} = "
            f"{prompt_length + gen_length} exceeds the model maximum of {max_seq_len} tokens; "
            "shorten one of them"
        )


def _generation_stats(sampler: str, opts: Any, counts: LoopCounts, batch: int,
                      prompt_length: int, step_s: list[float], total_s: float, *,
                      sparse: Any, batch_note: str | None) -> GenerationStats:
    """The run's statistics from the loop's counts and step times."""
    G = opts.gen_length
    return GenerationStats(
        sampler=sampler, steps=counts.forwards, batch=batch, prompt_length=prompt_length,
        gen_length=G, total_s=total_s, step_median_s=statistics.median(step_s), step_s=step_s,
        tokens_per_s=batch * G / total_s if total_s > 0 else float("inf"),
        cache=opts.cache, threshold=opts.threshold, forwards=counts.forwards,
        refreshes=counts.refreshes, graph_replays=counts.graph_replays,
        tokens_per_forward=G / max(counts.forwards, 1),
        sparse=sparse, batch_note=batch_note,
    )


def _run_timed(run: Callable[[Callable[[int, int], None]], torch.Tensor], device: torch.device,
               on_step: Callable[[int, int], None] | None) -> tuple[torch.Tensor, list[float], float]:
    """``run(step_done)`` under inference mode: its result, the seconds of every step (CUDA
    events on a GPU: no sync inside the loop) and the loop's wall time."""
    clock = StepClock(device)

    def step_done(done: int, total: int) -> None:
        clock.mark()
        if on_step is not None:
            on_step(done, total)

    start = time.perf_counter()
    clock.mark()
    with torch.inference_mode():
        out = run(step_done)
    step_s = clock.durations()  # waits for the device
    return out, step_s, time.perf_counter() - start


def _new_session(sparse: SparseConfig | SparseSpec, config: ModelConfig,
                 opts: LladaOptions | DreamOptions) -> StepSession:
    if opts.cache is not None:
        # With a cache the session's steps are the refresh forwards, one per block.
        from adaptive_dllm.generation.cached_sparse import wrap_session

        if not isinstance(sparse, SparseConfig):
            return wrap_session(sparse.new_session(config, opts.num_blocks), config, None)
        session = build_session(sparse, config, opts.num_blocks, gen_length=opts.gen_length,
                                block_starts=tuple(range(1, opts.num_blocks)))
        cached = None if opts.threshold is not None else opts.steps_per_block - 1
        return wrap_session(session, config, sparse, cached_steps=cached)
    if not isinstance(sparse, SparseConfig):
        return sparse.new_session(config, opts.steps)
    block_starts: tuple[int, ...] = ()
    if isinstance(opts, LladaOptions):
        # The first step of every later semi-autoregressive block (the plan may be refreshed).
        block_starts = tuple(b * opts.steps_per_block for b in range(1, opts.num_blocks))
    return build_session(sparse, config, opts.steps, gen_length=opts.gen_length,
                         block_starts=block_starts)


def _block_grid_note(mask: torch.Tensor | None) -> str | None:
    """Why a padded sparse batch may differ from one-by-one runs, or None when it cannot.

    Sparse plans cut every row of the batch into the same key blocks from position 0, and the
    budget counts the padded sequence's blocks. A left-padded row therefore groups its tokens and
    sizes its budget differently than when run alone, so its kept blocks (and output) can differ.
    Padded keys still get no attention, and dense attention is unaffected. Rows without padding
    (a batch of equal-length prompts) are exact.
    """
    if mask is None:
        return None
    pads = (~mask.bool()).sum(1)  # (B,) read once, before the loop
    if not bool(pads.any()):
        return None
    note = (f"sparse batch with left padding {pads.tolist()}: padded rows share the batch's block "
            "grid and budget, so they may differ from one-by-one runs; batch prompts of equal "
            "length for identical results")
    logger.warning("%s", note)
    return note


def _model_device(model: nn.Module, fallback: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return fallback.device
