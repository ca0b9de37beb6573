"""GenerationStats: what one ``generate`` call reports, typed, with the JSON keys of the CLI.

Shape legend: B batch, P prompt length, G generation length, S denoising steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass(frozen=True, eq=False)  # eq: Mapping's, so the stats equal their dict
class GenerationStats(Mapping[str, Any]):
    """Timings and sizes of one generation, and the sparse session's own stats.

    Read access by key (``stats["steps"]``, ``stats["sparse"]["realized_keep_ratio"]``) gives
    :meth:`to_dict`'s values, so callers that read the former dict keep working; attributes are
    the typed view (``stats.sparse`` is the session's
    :class:`~adaptive_dllm.sparsity.stats.SparseStats`, or what a custom session's ``stats()``
    returned).

    Attributes:
        sampler: ``"llada"`` or ``"dream"``.
        steps: S denoising steps.
        batch, prompt_length, gen_length: B, P (after left padding), G.
        total_s: Wall time of the denoising loop.
        step_median_s: Median of ``step_s``.
        step_s: Seconds per step (S values).
        tokens_per_s: ``B * G / total_s``.
        cache: None, ``"prefix"`` or ``"dual"``.
        threshold: The confidence threshold of parallel decoding, or None.
        forwards: Model calls (equals ``steps``).
        refreshes: Full forwards (every forward without a cache).
        graph_replays: Cached steps replayed from a CUDA graph (0 off CUDA or without a cache).
        tokens_per_forward: ``G / forwards`` per sequence.
        sparse: The session's stats, None when attention was dense.
        batch_note: Why a padded sparse batch may differ from one-by-one runs, or None.
    """

    sampler: str
    steps: int
    batch: int
    prompt_length: int
    gen_length: int
    total_s: float
    step_median_s: float
    step_s: list[float]
    tokens_per_s: float
    cache: str | None
    threshold: float | None
    forwards: int
    refreshes: int
    graph_replays: int
    tokens_per_forward: float
    sparse: Any
    batch_note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field by name, ``sparse`` as its own ``to_dict()`` (or as it is)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        to_dict = getattr(self.sparse, "to_dict", None)
        if callable(to_dict):
            out["sparse"] = to_dict()
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter([f.name for f in fields(self)])

    def __len__(self) -> int:
        return len(fields(self))


class StepClock:
    """Per-step wall times: CUDA events on GPU (no sync in the loop), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds between consecutive marks."""
        pairs = zip(self.marks[:-1], self.marks[1:], strict=True)
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in pairs]
        return [b - a for a, b in pairs]
