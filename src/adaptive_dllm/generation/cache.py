"""Approximate K/V cache for the semi-autoregressive samplers (prefix and dual, as Fast-dLLM).

Shape legend:
    B batch (2B with classifier-free guidance), Hkv key/value heads, H query heads, Lf full
    sequence length (prompt + generation), W window length, D head dim, n layers.

Per semi-autoregressive block ``[lo, hi)`` the first step is a **refresh**: a full forward that
computes what a no-cache step computes (bit for bit) and stores every layer's post-RoPE K/V. The
block's other steps are **cached steps**: only a window of positions is recomputed, and its
queries attend to the stored K/V plus the window's own fresh K/V:

- ``prefix``: the window is ``[lo, Lf)``, the block and everything after it; the cached keys
  are ``[0, lo)`` (the prompt and the blocks already decoded).
- ``dual``: the window is the block ``[lo, hi)``; the cached keys are ``[0, lo)`` and
  ``[hi, Lf)``, whose mask tokens are frozen at their refresh-time K/V.

(A sampler may start the window one position early, e.g. Dream, whose decision for position i
reads row i - 1.) Memory: one (B, Hkv, Lf, D) key and one value buffer per layer, allocated once
at the first refresh. A cached step writes its window's fresh K/V in place into the buffer, so
attention reads one contiguous tensor in sequence order (no concatenation, no copy of the cache,
and sparse key blocks line up with the full sequence's blocks). The window's slots hold K/V the
step computes anyway; the buffer never stores anything else.

Left padding works unchanged: the model applies the full (B, Lf) key mask to the buffer.

Sparse attention with a cache: see :class:`CachedSparse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch

from adaptive_dllm.errors import AdllmError

CacheMode = Literal["prefix", "dual"]
CACHE_MODES: tuple[str, ...] = ("prefix", "dual")

#: The sampler options of ``adllm ... --fast`` (``generate(..., **FAST_OPTIONS)`` in Python, from
#: ``adaptive_dllm.generation``): the cache and threshold measured against dense attention
#: without a cache on the retrieval task (docs/fidelity.md, "The --fast preset").
FAST_OPTIONS: Mapping[str, Any] = MappingProxyType({"cache": "prefix", "threshold": 0.9})


class BlockCache:
    """Per-generation K/V buffers plus the current window; the model's ``cache=`` argument.

    Args:
        mode: ``"prefix"`` or ``"dual"``.
        n_layers: Layers of the model.
        seq_len: Lf, the full sequence length.
    """

    def __init__(self, mode: CacheMode, n_layers: int, seq_len: int) -> None:
        if mode not in CACHE_MODES:
            raise AdllmError(f"cache={mode!r} is not valid; choose one of: None, "
                             f"{', '.join(CACHE_MODES)}")
        self.mode = mode
        self.n_layers = n_layers
        self.seq_len = seq_len
        self.window: tuple[int, int] | None = None
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []

    def begin_refresh(self) -> None:
        """The next forward runs on the whole sequence and stores its K/V."""
        self.window = None

    def begin_cached(self, lo: int, hi: int) -> tuple[int, int]:
        """The next forward computes positions ``[start, stop)`` only: ``[lo, Lf)`` for prefix,
        ``[lo, hi)`` for dual. Returns ``(start, stop)``."""
        if not self._k:
            raise AdllmError("a cached step needs a refresh forward first")
        self.window = self.window_for(lo, hi)
        return self.window

    def window_for(self, lo: int, hi: int) -> tuple[int, int]:
        """The ``(start, stop)`` :meth:`begin_cached` would set, without setting it."""
        return (lo, self.seq_len if self.mode == "prefix" else hi)

    def update(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`~adaptive_dllm.models.transformer.KVCache`: k, v are (B, Hkv, W, D)."""
        if self.window is None:
            if len(self._k) < self.n_layers:
                # Allocated once, at the first refresh (dtype, device and batch known then).
                self._k.append(torch.empty_like(k))
                self._v.append(torch.empty_like(v))
            self._k[layer].copy_(k)
            self._v[layer].copy_(v)
            return k, v  # the refresh attends to its own fresh K/V, exactly as without a cache
        lo, hi = self.window
        self._k[layer][:, :, lo:hi] = k
        self._v[layer][:, :, lo:hi] = v
        return self._k[layer], self._v[layer]

    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return sum(t.numel() * t.element_size() for t in self._k + self._v)


@dataclass
class LoopCounts:
    """What a sampler loop did, filled in as it runs (reported in the generation stats).

    Attributes:
        forwards: Model calls (a CFG step is one call on the doubled batch).
        refreshes: Full forwards that refreshed the cache (every forward without a cache).
        block_steps: Steps taken in each semi-autoregressive block.
        graph_replays: Cached steps replayed from a CUDA graph
            (:mod:`~adaptive_dllm.generation.step_graph`).
    """

    forwards: int = 0
    refreshes: int = 0
    graph_replays: int = 0
    block_steps: list[int] = field(default_factory=list)

    def count(self, *, refresh: bool) -> None:
        self.forwards += 1
        self.refreshes += int(refresh)


def threshold_clashes(options: Mapping[str, Any]) -> list[str]:
    """The options among ``options`` (``generate()`` keywords) that threshold decoding cannot go
    with, in this order: ``steps`` other than ``gen_length`` (each block runs until it is
    unmasked; ``steps`` without ``gen_length`` counts, since the default is not known here),
    ``remasking`` other than ``low_confidence`` (LLaDA), ``alg="origin"`` and a non-zero
    ``alg_temp`` (Dream): the threshold compares model confidences, most confident first.
    The one rule behind both samplers' options and the CLI's ``--fast``."""
    clashes = []
    if options.get("steps") is not None and options.get("steps") != options.get("gen_length"):
        clashes.append("steps")
    if options.get("remasking", "low_confidence") != "low_confidence":
        clashes.append("remasking")
    if options.get("alg") == "origin":
        clashes.append("alg")
    if options.get("alg_temp"):
        clashes.append("alg_temp")
    return clashes


def threshold_counts(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Tokens each row commits under parallel (threshold) decoding.

    Every masked position whose confidence exceeds ``threshold`` is committed, and at least one
    (the most confident) while the row still has masked positions.

    Args:
        confidence: (B, W) float, ``-inf`` at positions that are not masked.
        threshold: tau.

    Returns:
        (B,) int64 counts for :func:`~adaptive_dllm.generation.schedule.select_top`.
    """
    above = (confidence > threshold).sum(-1)
    masked = torch.isfinite(confidence).sum(-1)
    return torch.where(masked > 0, above.clamp_min(1), 0)


def check_cache(name: str, value: Any) -> None:
    """Raise AdllmError unless ``value`` is None or a cache mode."""
    if value is not None and value not in CACHE_MODES:
        raise AdllmError(f"{name}={value!r} is not valid; choose one of: None, "
                         f"{', '.join(CACHE_MODES)}")
