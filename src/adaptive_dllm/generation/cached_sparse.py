"""Sparse attention with an approximate K/V cache: which forwards are dense, sparse, and how.

Shape legend:
    B batch, H query heads, Hkv KV heads, G = H // Hkv, Lf full length, W window (cached
    step's queries), D head dim, bs sparse block size, Nk = ceil(Lf / bs) key blocks.

**The rule.** With a cache the number of denoising steps is data-dependent (threshold decoding),
but the number of refresh forwards is not: one per semi-autoregressive block, R = num_blocks.
So the SparseD schedule counts **refresh forwards**: the session is created for R steps and sees
``begin_step(r, R)`` before refresh r only (with ``refresh="block"`` every later refresh is a
build step again).

- Refreshes ``[0, d)`` with ``d = dense_step_count(R, skip)`` run dense; refresh ``d - 1`` builds
  the session's plan from its own q/k (the dense warm-up and plan build are refresh forwards).
  Later refreshes run the block-sparse prefill path with that plan.
- Cached steps of a block whose refresh was dense (before ``d - 1``) run dense. From refresh
  ``d - 1`` on, every refresh also builds a **decode plan** for the block's cached steps: per
  (batch, KV head), the key blocks of highest exact attention mass of the window's queries at
  that refresh (summed over the window and the query heads of the group), the window's own key
  blocks always kept, as many blocks as the allocator gives that unit for Nk key blocks (so the
  mean keep ratio is ``select`` as for prefill; raised to the window's own block count where
  that is larger, and the realised ratio is reported as ``cached_keep_ratio``). The cached steps run it with
  :mod:`~adaptive_dllm.kernels.decode_sparse` (the Triton kernel on a GPU, its eager oracle
  under the ``reference`` backend or without Triton).
- Under ``backend="auto"`` the cached steps get their own decision
  (:meth:`~adaptive_dllm.sparsity.cost.CostModel.decide_cached`, made at the first refresh):
  a short cache, or too few cached steps per block to pay back the decode-plan build, runs the
  cached steps dense even when the refreshes run sparse; the stats say which and why
  (``cached_backend``, ``cached_reason``).
- ``select = 1`` (or a session that decided to run dense) runs dense everywhere, so a cached
  sparse run then equals the dense run with the same cache exactly.

Per-query-head units (``gqa="query"``) keep per KV head the largest count of the group's heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adaptive_dllm.attention.api import attend
from adaptive_dllm.generation.schedule import StepSession
from adaptive_dllm.kernels.support import triton_available
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.sparsity.config import SparseConfig
from adaptive_dllm.sparsity.cost import Decision


def wrap_session(session: StepSession, model_config: ModelConfig,
                 config: SparseConfig | None, *, cached_steps: int | None = None) -> CachedSparse:
    """The hook a sampler with a cache passes to the model in place of ``session``; with
    ``config`` None (a custom session) cached steps run dense. ``cached_steps``: cached steps
    per block (None: unknown, threshold decoding), for the ``auto`` decision."""
    return CachedSparse(session, model_config, config, cached_steps=cached_steps)


class CachedSparse:
    """Attention hook for a sparse session under an approximate K/V cache (see module doc).

    A forward is a refresh when its queries cover every key (q and k have one length), a cached
    step otherwise; the sampler calls :meth:`begin_step` before refreshes only,
    :meth:`set_window` with the rows its cached steps will compute, and :meth:`begin_cached`
    before each cached step.
    """

    def __init__(self, session: StepSession, model_config: ModelConfig,
                 config: SparseConfig | None, *, cached_steps: int | None = None) -> None:
        self.session = session
        self.cached_steps = cached_steps
        self.cached_decision: Decision | None = None
        self.config = config
        self.n_layers = model_config.n_layers
        self.group = model_config.group_size
        self._plans: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.n_layers
        self._window: tuple[int, int] | None = None
        self._build = False
        self.cached_dense = 0
        self.cached_sparse = 0
        self._kept = [0, 0]  # kept blocks, slots over every decode plan (host ints: no sync)

    def begin_step(self, step: int, total: int) -> None:
        """Before refresh forward ``step`` of ``total`` (one per block)."""
        from adaptive_dllm.sparsity.schedule import dense_step_count

        self.session.begin_step(step, total)
        config = self.config
        self._build = (config is not None and not config.is_dense
                       and step >= dense_step_count(total, config.skip) - 1)
        self._plans = [None] * self.n_layers

    def set_window(self, window: tuple[int, int]) -> None:
        """Rows ``[start, stop)`` that the coming cached steps compute."""
        self._window = window

    def begin_cached(self) -> None:
        """Before each cached step: counts it as dense or sparse. Counted here, not in the
        attention call, because a replayed CUDA graph (:mod:`~adaptive_dllm.generation.step_graph`)
        runs the step without calling this hook."""
        if self._plans[0] is None:
            self.cached_dense += 1
        else:
            self.cached_sparse += 1

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_mask: torch.Tensor | None) -> torch.Tensor:
        if q.shape[2] == k.shape[2]:  # refresh: the session's own schedule
            out = self.session(layer, q, k, v, key_mask)
            if self.cached_decision is None:
                self.cached_decision = self._decide_cached(k)
            if self._build and self._window is not None and (
                    self.cached_decision.backend != "dense"):
                self._plans[layer] = self._decode_plan(layer, q, k, key_mask)
            return out
        plan = self._plans[layer]
        if plan is None:
            return attend(q, k, v, key_mask=key_mask)
        return self._run(q, k, v, plan, key_mask)

    def _decide_cached(self, k: torch.Tensor) -> Decision:
        """Whether cached steps run sparse: the refreshes' decision, and under ``auto`` the cost
        model's for the cache's size (k: (B, Hkv, Lf, D), one layer's keys)."""
        decision = getattr(self.session, "decision", None)
        if decision is None:  # a custom session: no decision of its own
            return Decision("dense", "a custom session: cached steps run dense")
        if decision.backend == "dense" or getattr(self.session, "requested_backend", None) != "auto":
            return decision
        kv_bytes = 2 * k.numel() * k.element_size()
        return self.session.cost_model.decide_cached(
            refresh=decision, select=self.config.select, kv_bytes=kv_bytes,
            cached_steps=self.cached_steps, group=self.group)

    def _decode_plan(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                     key_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B, Hkv, kmax) int32, counts (B, Hkv) int32) from the window's mass."""
        config = self.config
        bs = config.block_size
        start, stop = self._window
        B, H, Lf, D = q.shape
        Hkv = k.shape[1]
        n_blocks = -(-Lf // bs)
        mass = _window_mass(q[:, :, start:stop], k, key_mask, bs)  # (B, Hkv, Nk)
        own = torch.arange(start // bs, -(-stop // bs), device=q.device)
        mass[:, :, own] = float("inf")  # the window's own key blocks are always kept
        counts = self._counts(layer, n_blocks, Hkv, len(own))  # (Hkv,) CPU: no device sync
        kmax = int(counts.max())
        self._kept[0] += B * int(counts.sum())
        self._kept[1] += B * Hkv * n_blocks
        order = torch.sort(mass, dim=-1, descending=True, stable=True).indices[..., :kmax]
        counts = counts.to(device=q.device, dtype=torch.int32)
        keep = torch.arange(kmax, device=q.device) < counts[:, None]  # (Hkv, kmax)
        idx = torch.where(keep, order, n_blocks).sort(dim=-1).values  # ascending, pad last
        idx = torch.where(idx < n_blocks, idx, -1).to(torch.int32)
        return idx.contiguous(), counts.expand(B, Hkv).contiguous()

    def _counts(self, layer: int, n_blocks: int, n_kv: int, own: int) -> torch.Tensor:
        # One joint allocation over all Nk key blocks (no prompt/generation split), from the
        # planner's cache: computed once per Nk, not once per layer and refresh.
        alloc, _ = self.session.planner.allocation(n_blocks, n_blocks)
        counts = alloc.blocks[layer].to(torch.int64)  # (U,)
        if counts.numel() != n_kv:  # per-query-head units: the group's largest count
            counts = counts.view(n_kv, -1).amax(-1)
        return counts.clamp(min=min(own, n_blocks), max=n_blocks)

    def _run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             plan: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None
             ) -> torch.Tensor:
        from adaptive_dllm.kernels import decode_sparse as ds

        idx, cnt = plan
        bs = self.config.block_size
        backend = self.cached_decision.backend
        if backend != "reference" and q.is_cuda and triton_available():
            return ds.decode_sparse(q, k, v, idx, cnt, block_size=bs, key_mask=key_mask)
        return ds.decode_reference(q, k, v, idx, cnt, block_size=bs, key_mask=key_mask)

    def stats(self) -> dict[str, Any]:
        """The session's stats plus the cached steps: how many ran dense or sparse, and the
        decode plans' realised keep ratio (None when none was built)."""
        out = dict(self.session.stats())
        kept, slots = self._kept
        ratio = kept / slots if slots else None
        decision = self.cached_decision
        out.update({"schedule_over": "refresh forwards",
                    "cached_backend": None if decision is None else decision.backend,
                    "cached_reason": None if decision is None else decision.reason,
                    "cached_dense_steps": self.cached_dense,
                    "cached_sparse_steps": self.cached_sparse,
                    "cached_keep_ratio": ratio})
        return out


def _window_mass(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None,
                 bs: int) -> torch.Tensor:
    """Exact attention mass per key block of the window's queries, summed over the window and
    each KV head's query group: q (B, H, W, D), k (B, Hkv, Lf, D) -> (B, Hkv, Nk) float32.
    One KV head at a time, so at most (B, G, W, Lf) scores exist at once."""
    B, H, W, D = q.shape
    Hkv, Lf = k.shape[1], k.shape[2]
    G = H // Hkv
    n = -(-Lf // bs)
    out = torch.zeros(B, Hkv, n * bs, device=q.device, dtype=torch.float32)
    for h in range(Hkv):
        s = q[:, h * G:(h + 1) * G].float() @ k[:, h:h + 1].float().transpose(-1, -2)
        s = s / math.sqrt(D)  # (B, G, W, Lf)
        if key_mask is not None:
            s = s.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
        p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
        out[:, h, :Lf] = p.sum(dim=(1, 2))
    return out.view(B, Hkv, n, bs).sum(-1)

