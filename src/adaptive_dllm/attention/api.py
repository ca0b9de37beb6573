"""The one attention seam that model code calls, and the backend registry.

Shape legend:
    B batch, H query heads, Hkv key/value heads (H % Hkv == 0), L sequence length, D head dim.

Model code never picks a kernel. A transformer layer calls ``attend(q, k, v, ...)`` (or the
:class:`AttentionHook` the caller passed to the model, which in turn calls ``attend``). Backends
(:class:`~adaptive_dllm.attention.backends.Backend` objects) are registered by name; this module
is the only place that knows every built-in one: ``"sdpa"`` (dense, PyTorch's fused kernels) is
the default, ``"reference"`` is the eager oracle every other backend is tested against,
``"flex"`` runs sparse plans with FlexAttention, ``"triton"`` with the project's own Triton
kernel and ``"gather"`` by gathering the kept key blocks in PyTorch (exact, any device; the fast
sparse path on the CPU). flex, triton and gather are imported on first use: importing the package
loads no kernels.

Query head h reads key/value head ``h // (H // Hkv)``: backends must not repeat K/V when they
can avoid it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch

from adaptive_dllm.attention.backends import Backend, BackendBase
from adaptive_dllm.attention.plan import SparsePlan
from adaptive_dllm.errors import AdllmError

_lock = threading.Lock()
_BACKENDS: dict[str, Backend] = {}


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


class FunctionBackend(BackendBase):
    """A plain function ``fn(q, k, v, *, key_mask, plan) -> out`` as a backend."""

    def __init__(self, name: str, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]
        self.fn = fn

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor:
        return self.fn(q, k, v, key_mask=key_mask, plan=plan)


def register_backend(name: str, backend: Backend | Callable[..., torch.Tensor]) -> None:
    """Register (or replace) an attention backend under ``name``: a
    :class:`~adaptive_dllm.attention.backends.Backend` or a plain function
    ``fn(q, k, v, *, key_mask, plan) -> out``."""
    if not isinstance(backend, Backend):
        backend = FunctionBackend(name, backend)
    _ensure_builtin()
    with _lock:
        _BACKENDS[name] = backend


def available_backends() -> tuple[str, ...]:
    _ensure_builtin()
    return tuple(sorted(_BACKENDS))


def get_backend(name: str) -> Backend:
    """The registered backend called ``name`` (the built-in ones are made at first use)."""
    _ensure_builtin()
    backend = _BACKENDS.get(name)
    if backend is None:
        raise AdllmError(
            f"unknown attention backend {name!r}; choose one of {', '.join(sorted(_BACKENDS))}"
        )
    if isinstance(backend, _Lazy):
        with _lock:
            backend = _BACKENDS[name]
            if isinstance(backend, _Lazy):
                backend = _BACKENDS[name] = backend.make()
    return backend


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    plan: SparsePlan | None = None,
    backend: str | Backend = "sdpa",
    prepared: Any = None,
) -> torch.Tensor:
    """Bidirectional multi-head attention, dense or sparse.

    Computes ``softmax(q k^T / sqrt(D) + mask) v`` (Vaswani et al. 2017, Eq. 1) with no causal mask.

    Args:
        q: (B, H, Lq, D) queries; Lq = L except in a cached step (a window of the sequence).
        k: (B, Hkv, L, D) keys; H a multiple of Hkv (GQA).
        v: (B, Hkv, L, D) values.
        key_mask: (B, L) bool, True where the key is a real token; padded keys get no weight.
        plan: the layer's :class:`~adaptive_dllm.attention.plan.SparsePlan`, or None for dense.
        backend: a registered backend name, or a backend object (e.g. one constructed with
            other options).
        prepared: ``backend.prepare(plan, H)``'s result when the caller keeps it (None: the
            backend prepares the plan for this call).

    Returns:
        (B, H, Lq, D) attention output in q's dtype.

    Raises:
        AdllmError: shapes or dtypes that do not fit together (checked here, once for every
            backend: a mismatch would otherwise be a kernel's error, or silently broadcast).
    """
    check_shapes(q, k, v, key_mask)
    impl = get_backend(backend) if isinstance(backend, str) else backend
    return impl.run(q, k, v, key_mask=key_mask, plan=plan, prepared=prepared)


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_mask: torch.Tensor | None) -> None:
    """Raise a one-line :class:`AdllmError` unless q (B, H, Lq, D), k and v (B, Hkv, L, D) and
    key_mask (B, L) fit together. Shape comparisons only: no device sync."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise AdllmError(f"attend needs 4-d q, k, v (B, heads, length, head dim); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise AdllmError(f"attend: k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
    (b, h, _, d), (bk, hkv, length, dk) = q.shape, k.shape
    if b != bk or d != dk or hkv == 0 or h % hkv:
        raise AdllmError(f"attend: q {tuple(q.shape)} does not fit k {tuple(k.shape)}: need the "
                         "same batch and head dim, and query heads a multiple of key heads")
    if not q.dtype == k.dtype == v.dtype:
        raise AdllmError(f"attend: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); "
                         "cast them to one")
    if key_mask is not None and tuple(key_mask.shape) != (b, length):
        raise AdllmError(f"attend: key_mask {tuple(key_mask.shape)} must be (batch, key length) "
                         f"= {(b, length)}")


class _Lazy:
    """A built-in backend whose module is imported when it is first used."""

    def __init__(self, make: Callable[[], Backend]) -> None:
        self.make = make


def _make_flex() -> Backend:
    # Imported on first use: loading FlexAttention costs time and nothing needs it before.
    from adaptive_dllm.attention.flex import FlexBackend

    return FlexBackend()


def _make_triton() -> Backend:
    from adaptive_dllm.attention.triton import TritonBackend

    return TritonBackend()


def _make_gather() -> Backend:
    from adaptive_dllm.attention.gather import GatherBackend

    return GatherBackend()


def _ensure_builtin() -> None:
    # Lazy so that importing the package registers nothing and loads no kernels.
    if "sdpa" in _BACKENDS:
        return
    from adaptive_dllm.attention.reference import ReferenceBackend
    from adaptive_dllm.attention.sdpa import SdpaBackend

    with _lock:
        _BACKENDS.setdefault("sdpa", SdpaBackend())
        _BACKENDS.setdefault("reference", ReferenceBackend())
        _BACKENDS.setdefault("flex", _Lazy(_make_flex))  # type: ignore[arg-type]
        _BACKENDS.setdefault("triton", _Lazy(_make_triton))  # type: ignore[arg-type]
        _BACKENDS.setdefault("gather", _Lazy(_make_gather))  # type: ignore[arg-type]
