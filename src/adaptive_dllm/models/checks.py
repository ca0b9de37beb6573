"""Checks that a model's numbers are numbers: finite weights at load, finite first logits.

A checkpoint whose weights hold NaN or Inf (a corrupt download, a failed conversion, an fp16
overflow) still runs: every logit is NaN, argmax picks token 0 at every step and the output is
silently garbage. These checks turn that into a one-line error.

- :func:`check_finite_weights`: every tensor, as it is loaded (after the dtype conversion, so a
  value that overflows the chosen dtype is caught too).
- :func:`checked_first_forward`: wraps any model so that the logits of its first call are
  checked (once: a single host sync per generation), for models not loaded from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adaptive_dllm.errors import AdllmError, CheckpointError

__all__ = ["check_finite_logits", "check_finite_weights", "checked_first_forward"]


def check_finite_weights(name: str, tensor: torch.Tensor, file: str | Path) -> None:
    """Raise :class:`CheckpointError` when ``tensor`` holds a NaN or an infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(
            f"tensor {name} in {file} holds {bad} of {tensor.numel()} non-finite values "
            f"(NaN or Inf) as {str(tensor.dtype).removeprefix('torch.')}; the checkpoint is "
            "corrupt (re-download it) or overflows this dtype (try --dtype float32)")


def check_finite_logits(logits: torch.Tensor) -> None:
    """Raise :class:`AdllmError` when ``logits`` hold a NaN or +Inf.

    -Inf is allowed: it is how a model rules a token out.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        return
    if bool((torch.isnan(logits) | torch.isposinf(logits)).any()):
        raise AdllmError(
            "the model's first forward pass gave NaN or +Inf logits, so every generated token "
            "would be arbitrary; check the weights, or use --dtype float32 / bfloat16 if fp16 "
            "overflows")


class _FirstForwardCheck:
    """Calls the wrapped model; checks the logits of the first call only."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._checked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._model(*args, **kwargs)
        if not self._checked:
            self._checked = True
            check_finite_logits(out)
        return out


def checked_first_forward(model: Any) -> Any:
    """``model`` behind a proxy that checks its first call's logits with
    :func:`check_finite_logits`; attributes (``config``, ...) pass through."""
    return _FirstForwardCheck(model)
