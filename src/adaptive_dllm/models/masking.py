"""The masking rule shared by the masked-token NLL (:mod:`adaptive_dllm.evaluation.likelihood`)
and the importance calibration prompts (:mod:`adaptive_dllm.importance.estimators`).

Shape legend: P passages, n eligible positions per passage.

It lives below both (``models`` < ``importance`` < ``evaluation``), so importance estimation does
not import evaluation.
"""

from __future__ import annotations

import math

import torch

from adaptive_dllm.errors import AdllmError


def mask_count(n: int, ratio: float) -> int:
    """Positions masked out of n eligible ones at ``ratio``: floor(r * n + 0.5), clamped to [1, n]."""
    if not 0.0 < ratio <= 1.0:
        raise AdllmError(f"mask ratio {ratio} must be in (0, 1]")
    return min(n, max(1, math.floor(ratio * n + 0.5)))


def mask_orders(n_passages: int, length: int, *, seed: int, skip_first: bool) -> torch.Tensor:
    """(P, n) int64: per passage, a random order of its eligible positions (the masking order).

    Drawn on the CPU from one generator seeded with ``seed``, passage after passage, so the order
    does not depend on the device or the batch size. ``skip_first`` excludes position 0.
    """
    first = 1 if skip_first else 0
    n = length - first
    if n < 1:
        raise AdllmError(f"passages of {length} token(s) have no position to mask")
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen) + first for _ in range(n_passages)])
