"""CUDA graphs for the cached steps of a semi-autoregressive block.

Shape legend:
    B batch (2B with classifier-free guidance), W window length (the cached step's positions).

Why: a cached step computes a window of a few dozen positions, so on a GPU its kernels take
microseconds and the host's launch path dominates. On an H100 a 4-layer cached step at a 4k
prompt took about 4 ms, several times its memory traffic (``benchmarks/README.md``, "4k"). Every
cached step of a block runs the same kernels on the same shapes and on the same buffers (the
K/V cache, the attention mask, the block's decode plans, the weights), so the block's second
cached step records them into one CUDA graph and the later steps replay it: one launch per step.

Rules that keep a replay identical to the eager step it stands for:

- Only cached steps are recorded. A refresh (``cache.window is None``) runs eagerly and drops
  the graph: it rebuilds the sparse decode plans and rewrites the cache, and nothing recorded
  before it may run after it.
- A graph is keyed by the window, ``logits_from`` and the input's shape; a new key (a new block)
  runs eagerly once more, then records anew.
- The first cached step of a key runs eagerly: Triton compiles its kernels and cuBLAS picks its
  own on that shape before anything is recorded.
- The step's input ids are copied into the recorded input buffer; the logits come back in the
  recorded output buffer, which the next replay overwrites (the samplers read them at once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation.cache import LoopCounts


class StepGraph:
    """Runs a sampler's model calls, replaying cached steps from a CUDA graph (module doc).

    Args:
        device: the CUDA device the model runs on.
        counts: the loop's counts; ``graph_replays`` grows by one per replayed step.
    """

    def __init__(self, device: torch.device, counts: LoopCounts) -> None:
        self.counts = counts
        self.stream = torch.cuda.Stream(device)
        self._seen: tuple | None = None  # key of the current block's cached steps (and graph)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: torch.Tensor | None = None  # (B, W) recorded input ids
        self._logits: torch.Tensor | None = None  # recorded output

    def __call__(self, model: nn.Module, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``model(inputs, **kwargs)``, replayed when a graph of this cached step exists."""
        cache = kwargs.get("cache")
        if cache is None or cache.window is None:
            self._drop()
            return model(inputs, **kwargs)
        key = (cache.window, kwargs.get("logits_from"), tuple(inputs.shape), inputs.dtype)
        if self._graph is not None and key == self._seen:
            self._inputs.copy_(inputs)
            self._graph.replay()
            self.counts.graph_replays += 1
            return self._logits
        if key != self._seen:  # the key's first step: eager, as warm-up
            self._drop()
            self._seen = key
            return model(inputs, **kwargs)
        self._record(model, inputs, kwargs)
        self._graph.replay()
        self.counts.graph_replays += 1
        return self._logits

    def _record(self, model: nn.Module, inputs: torch.Tensor, kwargs: dict[str, Any]) -> None:
        self._inputs = inputs.clone()
        graph = torch.cuda.CUDAGraph()
        # capture_begin/end rather than the torch.cuda.graph context: the context runs
        # gc.collect() and empty_cache() on every capture, tens of milliseconds per block.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            # Its own memory pool, freed with the graph: a pool handle shared across blocks
            # fails PyTorch's allocator assert once the graph that created it is gone.
            graph.capture_begin()
            try:
                self._logits = model(self._inputs, **kwargs)
            except RuntimeError as err:
                with contextlib.suppress(RuntimeError):  # the capture is invalid already
                    graph.capture_end()
                self._drop()
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise AdllmError(f"recording a cached step as a CUDA graph failed ({first}); a model "
                                 "or attention hook that reads tensors back to the host cannot "
                                 "be recorded: pass cuda_graphs=False (--no-cuda-graphs)") from err
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        self._graph = graph

    def _drop(self) -> None:
        self._graph = self._inputs = self._logits = None
        self._seen = None


def call_model(model: nn.Module, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``model(inputs, **kwargs)``: how a sampler calls its model when nothing is recorded."""
    return model(inputs, **kwargs)


def step_runner(enabled: bool, cache: Any, device: torch.device,
                counts: LoopCounts) -> Callable[..., torch.Tensor]:
    """How a sampler calls its model: a :class:`StepGraph` when ``enabled``, with a cache (only
    cached steps are recorded) on a CUDA device; else :func:`call_model`."""
    if not enabled or cache is None or device.type != "cuda":
        return call_model
    return StepGraph(device, counts)
