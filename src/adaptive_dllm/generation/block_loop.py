"""The semi-autoregressive block loop that LLaDA's and Dream's samplers share.

Shape legend:
    B batch, Lf full sequence length (prompt + generation).

Both samplers walk the generated region block by block; a block takes ``steps_per_block``
steps, or with ``threshold`` (parallel decoding) steps until it holds no mask token. Around each
step the bookkeeping is the same: tell the cache and the step session what the forward is,
record the history, count the forward and report progress. :func:`walk_blocks` does that and
yields one :class:`BlockStep` per forward, so a sampler's loop body is only its own step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from adaptive_dllm.generation.cache import BlockCache, LoopCounts
from adaptive_dllm.generation.schedule import StepSession


class LoopOptions(Protocol):
    """The sampler options the block loop reads (LladaOptions and DreamOptions have them)."""

    @property
    def steps(self) -> int | None: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def steps_per_block(self) -> int: ...


@dataclass(frozen=True)
class BlockStep:
    """One forward of the block loop.

    Attributes:
        block: index of the block.
        j: step within the block.
        lo: first position of the block.
        hi: one past the block's last position.
        refresh: whether the forward is a full one (every forward without a cache).
    """

    block: int
    j: int
    lo: int
    hi: int
    refresh: bool


def walk_blocks(x: torch.Tensor, *, start: int, width: int, options: LoopOptions, mask_id: int,
                cache: BlockCache | None, session: StepSession | None, counts: LoopCounts,
                history: list[torch.Tensor] | None,
                on_step: Callable[[int, int], None] | None, lead: int = 0) -> Iterator[BlockStep]:
    """Yield the loop's forwards over ``x`` (B, Lf), which the caller updates in place.

    Args:
        start: position of the first generated token (the prompt length).
        width: block length.
        lead: rows before the block that decide its tokens; the cache window and the session
            window start that early (Dream reads row i - 1 for position i).
    """
    step = 0
    for block in range(options.num_blocks):
        lo = start + block * width
        hi = lo + width
        j = 0
        while _block_open(x, lo, hi, j, options, mask_id):
            refresh = cache is None or j == 0
            _begin_forward(session, cache, refresh=refresh, step=step, block=block,
                           rows=(lo - lead, hi), options=options)
            if history is not None:
                history.append(x.clone())
            yield BlockStep(block=block, j=j, lo=lo, hi=hi, refresh=refresh)
            counts.count(refresh=refresh)
            j += 1
            step += 1
            if on_step is not None:
                on_step(step, options.steps)
        counts.block_steps.append(j)
    if history is not None:
        history.append(x.clone())


def _block_open(x: torch.Tensor, lo: int, hi: int, j: int, o: LoopOptions, mask_id: int) -> bool:
    """Whether block ``[lo, hi)`` takes another step. With ``threshold`` the loop reads whether
    any mask token is left (one host sync per step, the documented exception)."""
    if o.threshold is None:
        return j < o.steps_per_block
    return j < hi - lo and bool((x[:, lo:hi] == mask_id).any())


def _begin_forward(session: StepSession | None, cache: BlockCache | None, *, refresh: bool,
                   step: int, block: int, rows: tuple[int, int], options: LoopOptions) -> None:
    """Tell the session and the cache what the next forward is."""
    if cache is None:
        if session is not None:
            session.begin_step(step, options.steps)
        return
    if refresh:
        cache.begin_refresh()
        if session is not None:
            # Sessions wrapped for a cache count refresh forwards (cached_sparse.py).
            session.begin_step(block, options.num_blocks)
            if hasattr(session, "set_window"):
                session.set_window(cache.window_for(*rows))
    else:
        cache.begin_cached(*rows)
        if hasattr(session, "begin_cached"):
            session.begin_cached()
