"""The attention backend protocol, and what every backend shares.

Shape legend: B batch, H query heads, Hkv KV heads (H % Hkv == 0), L length, D head dim,
bs block size, N = ceil(L / bs).

A backend is an object, not a module: its tuning knobs are fields of a frozen options object it
holds, so a benchmark that wants other launch options constructs another backend instead of
mutating a module. Every backend says what it can run (:attr:`Backend.block_sizes`,
:attr:`Backend.max_head_dim`, :meth:`Backend.supports`), prepares a plan once
(:meth:`Backend.prepare`: e.g. the flex BlockMask or device-side counts, returned to the caller,
never written into the plan), runs it (:meth:`Backend.run`) and accounts for the time it spent
compiling kernels (:attr:`Backend.compile_log`). The fused build step (attention plus block
scores in one kernel) is an optional capability outside the protocol: a backend that has it
defines ``can_attend_and_score(q)`` and ``attend_and_score(...)`` (:class:`FusedBuildMixin`), and
callers ask :func:`runs_fused_build` before calling it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from adaptive_dllm.attention.plan import SparsePlan
from adaptive_dllm.kernels.support import MAX_HEAD_DIM, triton_available


@dataclass(frozen=True)
class CompileRecord:
    """One first use of a kernel signature and the seconds it took (compilation included)."""

    signature: str
    seconds: float


@runtime_checkable
class Backend(Protocol):
    """What :func:`~adaptive_dllm.attention.api.attend` and the sparse session call.

    ``run(q, k, v, key_mask=..., plan=..., prepared=...)`` takes q (B, H, L, D), k and v
    (B, Hkv, L, D), key_mask (B, L) bool or None (True = real token), the layer's plan (None for
    a dense backend) and ``prepare(plan, n_heads)``'s result (None: prepared on the fly), and
    returns (B, H, L, D) in q's dtype. Query head h reads key/value head ``h // (H // Hkv)``.
    """

    name: str
    block_sizes: tuple[int, ...]
    max_head_dim: int | None

    def supports(self, *, device_type: str, head_dim: int, block_size: int) -> str | None:
        """Why this backend cannot run such inputs (one line), or None when it can."""
        ...

    def prepare(self, plan: SparsePlan, n_heads: int) -> Any:
        """Backend-owned data derived from ``plan`` once (None when nothing is needed)."""
        ...

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
            key_mask: torch.Tensor | None = None, plan: SparsePlan | None = None,
            prepared: Any = None) -> torch.Tensor: ...

    @property
    def compile_log(self) -> tuple[CompileRecord, ...]:
        """Every first use of a new kernel signature by this backend, with its seconds."""
        ...


class BackendBase:
    """Defaults and the compile accounting shared by the built-in backends."""

    name: ClassVar[str] = ""
    block_sizes: tuple[int, ...] = ()
    max_head_dim: int | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[Hashable] = set()
        self._log: list[CompileRecord] = []

    @property
    def compile_log(self) -> tuple[CompileRecord, ...]:
        with self._lock:
            return tuple(self._log)

    def supports(self, *, device_type: str, head_dim: int, block_size: int) -> str | None:
        if self.block_sizes and block_size not in self.block_sizes:
            return (f"block_size={block_size} is not supported by the {self.name!r} backend; "
                    f"use one of {', '.join(map(str, self.block_sizes))}")
        if self.max_head_dim is not None and head_dim > self.max_head_dim:
            return (f"head dim {head_dim} is larger than the {self.max_head_dim} the "
                    f"{self.name!r} backend takes; use backend 'flex'")
        return None

    def prepare(self, plan: SparsePlan, n_heads: int) -> Any:
        return None

    def timed_first_use(self, signature: Hashable, device: torch.device,
                        launch: Callable[[], Any], *, synchronize: bool = False) -> Any:
        """``launch()``; the first time ``signature`` is seen, also time it and log it as a
        compile. Triton compiles on the host inside the launch call, so the host time of that
        call is the compile time (no device sync); ``synchronize`` waits for the device once
        (flex, whose compiled graph may defer work)."""
        with self._lock:
            first = signature not in self._seen
        if not first:
            return launch()
        start = time.perf_counter()
        out = launch()
        if synchronize and device.type == "cuda":
            torch.cuda.synchronize(device)
        with self._lock:
            if signature not in self._seen:
                self._seen.add(signature)
                self._log.append(CompileRecord(repr(signature), time.perf_counter() - start))
        return out


def runs_fused_build(backend: Backend, q: torch.Tensor) -> bool:
    """Whether ``backend`` runs the fused build step for queries ``q`` (B, H, L, D): False for
    a backend without the optional ``can_attend_and_score`` (e.g. a user's :class:`Backend`)."""
    can = getattr(backend, "can_attend_and_score", None)
    return can is not None and bool(can(q))


class FusedBuildMixin:
    """The fused build step (one Triton attention forward that also writes the exact block
    scores, :mod:`~adaptive_dllm.kernels.attend_and_score`), for backends that run on CUDA."""

    def can_attend_and_score(self, q: torch.Tensor) -> bool:
        return (q.is_cuda and not q.requires_grad and triton_available()
                and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
                and q.shape[-1] <= MAX_HEAD_DIM)

    def attend_and_score(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                         block_size: int, key_mask: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense attention (B, H, L, D) and the exact block mass per query head (B, H, N, N)."""
        from adaptive_dllm.kernels.attend_and_score import attend_and_score

        signature = ("attend_and_score", q.dtype, q.shape[-1], q.shape[1] // k.shape[1],
                     block_size, key_mask is not None)
        return self.timed_first_use(  # type: ignore[attr-defined]
            signature, q.device,
            lambda: attend_and_score(q, k, v, block_size=block_size, key_mask=key_mask))
