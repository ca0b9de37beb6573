"""The one attention seam that model code calls.

Shape legend:
    B batch, H query heads, Hkv key/value heads (H % Hkv == 0), L sequence length, D head dim.

Model code never picks a kernel. A transformer layer calls ``attend(q, k, v, ...)`` (or the
:class:`AttentionHook` the caller passed to the model, which in turn calls ``attend``). Backends
register by name; ``"sdpa"`` (dense, PyTorch's fused kernels) is the default, ``"reference"`` is
the eager oracle every other backend is tested against, ``"flex"`` runs sparse plans with
FlexAttention (``adaptive_dllm.attention.flex``) and ``"triton"`` with the project's own Triton
kernel (``adaptive_dllm.attention.block_sparse``), both imported on first use.

A backend is a function ``fn(q, k, v, *, key_mask, plan) -> out`` with
    q (B, H, L, D), k and v (B, Hkv, L, D), key_mask (B, L) bool or None (True = real token),
    plan: a per-layer sparse plan or None (dense), out (B, H, L, D) in q's dtype.
Query head h reads key/value head ``h // (H // Hkv)``: backends must not repeat K/V when they
can avoid it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from adaptive_dllm.errors import AdllmError

Backend = Callable[..., torch.Tensor]
_BACKENDS: dict[str, Backend] = {}
logger = logging.getLogger(__name__)


class AttentionHook(Protocol):
    """What a caller may pass to the model to take over attention (e.g. a sparse session).

    Called once per layer per forward with the layer index and the same tensors as
    :func:`attend`; must return the attention output (B, H, L, D).
    """

    def __call__(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor: ...


def register_backend(name: str, fn: Backend) -> None:
    """Register (or replace) an attention backend under ``name``."""
    _BACKENDS[name] = fn


@functools.cache
def triton_available() -> bool:
    """Whether triton can be imported: the project's Triton kernels (block scoring, fused
    RMSNorm/RoPE/SwiGLU) run on CUDA only then; without it the torch code runs instead."""
    found = importlib.util.find_spec("triton") is not None
    if not found:
        logger.info("triton is not installed: block scoring and the fused element-wise kernels "
                    "run as torch code")
    return found


def check_triton_device(device: torch.device) -> None:
    """Raise a one-line error unless the ``triton`` backend can run on ``device``: a CUDA GPU
    with triton installed (or Triton's CPU interpreter, ``TRITON_INTERPRET=1``, for tests)."""
    if not triton_available():
        raise AdllmError("backend 'triton' needs the triton package (pip install triton); "
                         "use backend 'reference' without it")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise AdllmError(f"backend 'triton' runs on a CUDA GPU, not on {device.type}; use "
                         f"backend 'reference' (or 'auto') there")


def check_plan_fits(plan: Any, q: torch.Tensor, backend: str) -> None:
    """One-line errors for a sparse backend called without a plan, or with one built for another
    length or batch (a batch-1 plan serves any batch)."""
    if plan is None:
        raise AdllmError(f"the {backend!r} backend needs a sparse plan; dense attention uses 'sdpa'")
    B, _, L, _ = q.shape
    if plan.seq_len != L or plan.batch not in (1, B):
        raise AdllmError(f"plan built for length {plan.seq_len} and batch {plan.batch} cannot "
                         f"run on length {L} and batch {B}")


def available_backends() -> tuple[str, ...]:
    _ensure_builtin()
    return tuple(sorted(_BACKENDS))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    plan: Any = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Bidirectional multi-head attention, dense or sparse.

    Computes ``softmax(q k^T / sqrt(D) + mask) v`` (Vaswani et al. 2017, Eq. 1) with no causal mask.

    Args:
        q: (B, H, L, D) queries.
        k: (B, Hkv, L, D) keys.
        v: (B, Hkv, L, D) values.
        key_mask: (B, L) bool, True where the key is a real token; padded keys get no weight.
        plan: a sparse plan for this layer (see ``adaptive_dllm.sparsity.plan``) or None for dense.
        backend: registered backend name.

    Returns:
        (B, H, L, D) attention output in q's dtype.
    """
    _ensure_builtin()
    fn = _BACKENDS.get(backend)
    if fn is None:
        raise AdllmError(
            f"unknown attention backend {backend!r}; choose one of {', '.join(sorted(_BACKENDS))}"
        )
    return fn(q, k, v, key_mask=key_mask, plan=plan)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    plan: Any = None,
) -> torch.Tensor:
    """Dense attention through ``F.scaled_dot_product_attention`` (flash / cuDNN / efficient)."""
    if plan is not None:
        raise AdllmError("the 'sdpa' backend is dense only; use backend 'flex' or 'reference'")
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _ensure_builtin() -> None:
    # Lazy so that importing the package registers nothing and loads no kernels.
    if "sdpa" not in _BACKENDS:
        from adaptive_dllm.attention import reference

        _BACKENDS.setdefault("sdpa", sdpa_attention)
        _BACKENDS.setdefault("reference", reference.reference_attention)
        _BACKENDS.setdefault("flex", _flex_attention)
        _BACKENDS.setdefault("triton", _triton_attention)


def _flex_attention(q, k, v, *, key_mask=None, plan=None):  # noqa: ANN001, ANN202
    # Imported on first use: loading FlexAttention costs time and nothing needs it before.
    from adaptive_dllm.attention.flex import flex_attention_backend

    return flex_attention_backend(q, k, v, key_mask=key_mask, plan=plan)


def _triton_attention(q, k, v, *, key_mask=None, plan=None):  # noqa: ANN001, ANN202
    # Imported on first use, like flex: importing the package loads no kernels.
    check_triton_device(q.device)
    from adaptive_dllm.attention.block_sparse import triton_attention_backend

    return triton_attention_backend(q, k, v, key_mask=key_mask, plan=plan)
