"""The shared block loop: steps per block, threshold stop, counts, history and progress."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_dllm.generation.block_loop import walk_blocks
from adaptive_dllm.generation.cache import LoopCounts

MASK = 9


@dataclass(frozen=True)
class _Options:
    steps: int | None
    threshold: float | None
    num_blocks: int
    steps_per_block: int


def test_fixed_steps_walk_every_block_and_record_history() -> None:
    x = torch.full((1, 6), MASK)
    counts, history, progress = LoopCounts(), [], []
    o = _Options(steps=4, threshold=None, num_blocks=2, steps_per_block=2)
    seen = [(s.block, s.j, s.lo, s.hi, s.refresh)
            for s in walk_blocks(x, start=2, width=2, options=o, mask_id=MASK, cache=None,
                                 session=None, counts=counts, history=history,
                                 on_step=lambda i, n: progress.append((i, n)))]
    assert seen == [(0, 0, 2, 4, True), (0, 1, 2, 4, True), (1, 0, 4, 6, True),
                    (1, 1, 4, 6, True)]
    assert counts.forwards == 4 and counts.refreshes == 4 and counts.block_steps == [2, 2]
    assert len(history) == 5  # one before each forward and the final state
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_threshold_ends_a_block_once_it_holds_no_mask() -> None:
    x = torch.full((1, 4), MASK)
    counts = LoopCounts()
    o = _Options(steps=None, threshold=0.5, num_blocks=1, steps_per_block=4)
    for s in walk_blocks(x, start=0, width=4, options=o, mask_id=MASK, cache=None,
                         session=None, counts=counts, history=None, on_step=None):
        x[0, s.j * 2:s.j * 2 + 2] = 1  # two tokens a step
    assert counts.block_steps == [2]
