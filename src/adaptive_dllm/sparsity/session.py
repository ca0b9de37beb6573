"""SparseSession: the per-generation attention hook that runs the SparseD schedule.

Shape legend: B batch, H query heads, Hkv KV heads, U units per layer, L length, D head dim,
bs block size, N = ceil(L / bs), N_p prompt key blocks.

The denoising loop calls ``begin_step(step, total)`` before every step and passes the session to
the model as ``attn``; the model calls ``session(layer, q, k, v, key_mask)`` in every layer.

- Dense steps call the dense seam (``attend``, SDPA) unchanged.
- In the build step (the last dense step) each layer also scores its q/k
  (:func:`~adaptive_dllm.sparsity.scoring.block_mass`) and builds its
  :class:`~adaptive_dllm.sparsity.plan.SparsePlan` from the allocator's counts; for ``flex`` the
  BlockMask is built there too, so the sparse steps only launch kernels.
- Sparse steps run the plan. A plan whose length or batch no longer matches is rebuilt from the
  current q/k (and used at once). In likelihood mode every forward builds its own plans.
- ``select == 1`` (and whatever the cost model rejects under ``backend="auto"``) runs the dense
  path exactly, and ``stats()`` says so.

Budgets: the allocator's counts depend only on the weights and N, so they are computed once per
(N, N_p) on the CPU for all layers (budget moving across layers with ``budget="global"``).

Host syncs: none in a sparse step. Plan builds read nothing back except the one-time flex compile
timing; kept-block measurements stay on the device until :meth:`SparseSession.stats`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from adaptive_dllm.attention.api import attend, check_triton_device, triton_available
from adaptive_dllm.budget.allocator import Allocation, allocate
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.sparsity.cost import CostModel, Decision
from adaptive_dllm.sparsity.plan import SparsePlan, prompt_block_count
from adaptive_dllm.sparsity.plan import build_plan as make_plan
from adaptive_dllm.sparsity.schedule import Schedule
from adaptive_dllm.sparsity.scoring import block_mass, reduce_units

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.models.config import ModelConfig
    from adaptive_dllm.sparsity.config import SparseConfig

logger = logging.getLogger(__name__)


class SparseSession:
    """Attention hook plus bookkeeping for one generation (or one likelihood run).

    Args:
        config: The SparseConfig.
        model_config: The model's config (layers, heads; the importance must fit it).
        total_steps: T denoising steps.
        gen_length: Generated tokens at the end of the sequence; None budgets jointly.
        cost_model: Break-even model for ``backend="auto"``.
    """

    def __init__(self, config: SparseConfig, model_config: ModelConfig, total_steps: int, *,
                 gen_length: int | None = None, cost_model: CostModel | None = None,
                 refresh_steps: tuple[int, ...] = ()) -> None:
        self.config = config
        self.model_config = model_config
        self.refresh_steps = tuple(refresh_steps)
        self.schedule = Schedule(total_steps, config.skip, self.refresh_steps)
        if gen_length is not None and (isinstance(gen_length, bool) or not isinstance(
                gen_length, int) or gen_length < 0):
            raise AdllmError(f"gen_length={gen_length!r} must be a non-negative integer")
        self.gen_length = gen_length
        self.weights = config.weights(model_config)  # (layers, units); checks the importance
        self.units = config.units_per_layer(model_config)
        self.group = model_config.n_heads // self.units
        self.region = config.region
        self.region_note = ""
        if config.region == "separate" and gen_length is None:
            self.region = "joint"
            self.region_note = "generation length not given: one joint budget over all keys"
        self.cost_model = cost_model or CostModel()
        self.decision: Decision | None = None
        self._plans: list[SparsePlan | None] = [None] * model_config.n_layers
        self._allocations: dict[tuple[int, int], tuple[Allocation, Allocation | None]] = {}
        self._last_allocation: tuple[Allocation, Allocation | None] | None = None
        self._kind: str | None = None
        self._step_kinds: list[str] = []
        self._forwards = 0
        self.plan_builds = 0
        self.build_kernel_used: str | None = None
        self.seq_len: int | None = None
        self._measured: list[tuple[torch.Tensor, int, int]] = []  # per used plan
        self._clock: _Clock | None = None
        self._compile_log_start = _compile_log_len()

    # -- the loop's side -------------------------------------------------------------------
    def begin_step(self, step: int, total: int) -> None:
        """Called before the model call of every denoising step (0-based ``step``)."""
        if total != self.schedule.total_steps:
            self.schedule = Schedule(total, self.config.skip, self.refresh_steps)
        self._kind = self.schedule.kind(step)
        self._step_kinds.append(self._kind)
        if self._clock is not None:
            self._clock.mark(self._kind)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of ``layer`` for this step: dense, dense + plan build, or sparse."""
        if self.decision is None:
            self._start(q)
        if layer == 0:
            self._forwards += 1
        backend = self.decision.backend
        if backend == "dense":
            return attend(q, k, v, key_mask=key_mask)
        kind = self._kind
        if self.config.likelihood or kind is None:
            plan = self._plans[layer]
            if self.config.likelihood or not _fits(plan, q):
                plan = self.build_plan(layer, q, k, key_mask)
            return self.run(plan, q, k, v, key_mask)
        if kind == "dense":
            return attend(q, k, v, key_mask=key_mask)
        if kind == "build":
            return self.build_step(layer, q, k, v, key_mask)
        plan = self._plans[layer]
        if not _fits(plan, q):
            plan = self.build_plan(layer, q, k, key_mask)  # length or batch changed
        return self.run(plan, q, k, v, key_mask)

    # -- internals ---------------------------------------------------------------------------
    def _start(self, q: torch.Tensor) -> None:
        L = q.shape[2]
        self.seq_len = L
        cfg = self.config
        if cfg.is_dense:
            self.decision = Decision("dense", "select=1 keeps every block: dense attention")
        elif cfg.backend == "auto":
            sparse_steps = 1 if cfg.likelihood else self.schedule.sparse_steps
            self.decision = self.cost_model.decide(select=cfg.select, seq_len=L,
                                                   device_type=q.device.type,
                                                   sparse_steps=sparse_steps)
            self.decision = _runnable(self.decision, q)
        else:
            if cfg.backend == "triton":
                check_triton_device(q.device)  # before any step runs, not at the first sparse one
            self.decision = Decision(cfg.backend, f"backend {cfg.backend!r} requested")
        self._clock = _Clock(q.device)
        if self._kind is not None:
            self._clock.mark(self._kind)
        logger.info("sparse attention: %s (%s)", self.decision.backend, self.decision.reason)

    def _allocation(self, n_blocks: int, prompt_blocks: int) -> tuple[Allocation, Allocation | None]:
        key = (n_blocks, prompt_blocks)
        if key not in self._allocations:
            cfg = self.config
            opts = {"min_keep_ratio": cfg.min_keep_ratio, "budget": cfg.budget}
            prompt = allocate(self.weights, cfg.select, prompt_blocks, **opts)
            gen = None
            if prompt_blocks < n_blocks:
                gen = allocate(self.weights, cfg.select, n_blocks - prompt_blocks, **opts)
            self._allocations[key] = (prompt, gen)
        return self._allocations[key]

    def build_step(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   key_mask: torch.Tensor | None) -> torch.Tensor:
        """The build step of ``layer``: its dense attention output (B, H, L, D), with the plan
        built and installed on the way; one fused kernel where it applies
        (:meth:`_fused_build_applies`), else dense SDPA then :meth:`build_plan`."""
        if self.decision is None:
            self._start(q)
        if not self._fused_build_applies(q):
            self.build_kernel_used = "separate"
            out = attend(q, k, v, key_mask=key_mask)
            self.build_plan(layer, q, k, key_mask)
            return out
        from adaptive_dllm.sparsity.fused_build import attend_and_score

        self.build_kernel_used = "fused"
        out, per_head = attend_and_score(q, k, v, block_size=self.config.block_size,
                                         key_mask=key_mask)
        self.build_plan(layer, q, k, key_mask,
                        scores=reduce_units(per_head, k.shape[1], self.config.gqa))
        return out

    def _fused_build_applies(self, q: torch.Tensor) -> bool:
        cfg = self.config
        if not (cfg.build_kernel == "fused" and self.decision.backend in ("triton", "flex")
                and q.is_cuda and cfg.estimator == "exact" and not q.requires_grad
                and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
                and triton_available()):
            return False
        from adaptive_dllm.attention.block_sparse import MAX_HEAD_DIM

        return q.shape[-1] <= MAX_HEAD_DIM

    def build_plan(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                   key_mask: torch.Tensor | None, *,
                   scores: torch.Tensor | None = None) -> SparsePlan:
        """Score ``layer``'s q/k and build (and install) its plan; also its flex BlockMask.

        Args:
            layer: Layer index.
            q: (B, H, L, D); k: (B, Hkv, L, D) post-RoPE.
            key_mask: (B, L) bool or None.
            scores: (B, U, N, N) block scores of this q/k when already computed (the fused
                build step); None scores here with the configured estimator.
        """
        if self.decision is None:
            self._start(q)
        token = self._clock.start_plan()
        cfg = self.config
        L = q.shape[2]
        bs = cfg.block_size
        n_blocks = -(-L // bs)
        gen = self.gen_length if self.region == "separate" else None
        prompt_blocks = max(1, prompt_block_count(L, gen, bs))
        alloc_prompt, alloc_gen = self._allocation(n_blocks, prompt_blocks)
        self._last_allocation = (alloc_prompt, alloc_gen)
        if scores is None:
            scores = block_mass(q, k, block_size=bs, key_mask=key_mask, units=cfg.gqa,
                                estimator=cfg.estimator)
        plan = make_plan(
            scores, alloc_prompt.blocks[layer],
            None if alloc_gen is None else alloc_gen.blocks[layer],
            layer=layer, block_size=bs, seq_len=L, prompt_blocks=prompt_blocks,
            group=self.group, key_mask=None if key_mask is None else key_mask.bool(),
        )
        if self.decision.backend == "flex":
            from adaptive_dllm.attention.flex import block_mask

            block_mask(plan, q.shape[1])  # built once, here, not in the sparse steps
        elif self.decision.backend == "triton":
            from adaptive_dllm.attention.block_sparse import prepare_plan

            prepare_plan(plan)  # device-side counts: the sparse steps copy nothing
        self._plans[layer] = plan
        self.plan_builds += 1
        self._clock.stop_plan(token)
        return plan

    def run(self, plan: SparsePlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             key_mask: torch.Tensor | None) -> torch.Tensor:
        """Execute ``plan`` with the session's backend (and count its kept blocks once)."""
        if not plan.cache.get("measured"):
            plan.cache["measured"] = True
            idx = plan.indices
            kept = torch.stack([((idx >= 0) & (idx < plan.prompt_blocks)).sum(),
                                (idx >= plan.prompt_blocks).sum()])  # stays on the device
            self._measured.append((kept, *plan.total_blocks()))
        return attend(q, k, v, key_mask=key_mask, plan=plan, backend=self.decision.backend)

    # -- report ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """What ran: backend and why, step counts, keep ratios, time per phase (JSON-ready).

        ``realized_keep_ratio`` is measured from the plans that actually ran (None when none
        did); ``allocator_keep_ratio`` is what the allocator promised for the last plan shape.
        """
        cfg = self.config
        decision = self.decision
        dense_run = decision is None or decision.backend == "dense"
        kinds = self._step_kinds
        if dense_run:
            dense_steps, sparse_steps = len(kinds), 0
        else:
            sparse_steps = sum(kd == "sparse" for kd in kinds)
            dense_steps = len(kinds) - sparse_steps
        realized = realized_prompt = realized_gen = None
        if self._measured:
            kept = torch.stack([m[0] for m in self._measured]).sum(0).tolist()
            slots_p = sum(m[1] for m in self._measured)
            slots_g = sum(m[2] for m in self._measured)
            realized = (kept[0] + kept[1]) / (slots_p + slots_g)
            realized_prompt = kept[0] / slots_p if slots_p else None
            realized_gen = kept[1] / slots_g if slots_g else None
        allocator = None
        note = ""
        if self._last_allocation is not None:
            ap, ag = self._last_allocation
            total = ap.realised_total + (0 if ag is None else ag.realised_total)
            slots = ap.n_units * (ap.n_blocks + (0 if ag is None else ag.n_blocks))
            allocator = total / slots
            labels = ("joint", None) if ag is None else ("prompt keys", "generation keys")
            note = "; ".join(f"{label}: {a.note}" for label, a in zip(labels, (ap, ag), strict=True)
                             if a is not None and a.note)
        times = {}
        if self._clock is not None:
            times = self._clock.phases(charge_build_excess=not dense_run and self.plan_builds > 0)
        compiles = _compile_log_since(self._compile_log_start)
        return {
            "mode": cfg.mode,
            "backend": "dense" if decision is None else decision.backend,
            "backend_reason": "no forward ran" if decision is None else decision.reason,
            "requested_backend": cfg.backend,
            "likelihood": cfg.likelihood,
            "total_steps": self.schedule.total_steps,
            "dense_steps": dense_steps,
            "sparse_steps": sparse_steps,
            "switch_step": None if dense_run else self.schedule.dense_steps,
            "refresh_steps": 0 if dense_run else sum(
                s >= self.schedule.dense_steps for s in self.schedule.refresh_steps),
            "forwards": self._forwards,
            "plan_builds": self.plan_builds,
            "target_keep_ratio": cfg.select,
            "allocator_keep_ratio": allocator,
            "realized_keep_ratio": realized,
            "realized_keep_ratio_prompt": realized_prompt,
            "realized_keep_ratio_gen": realized_gen,
            "allocation_note": note,
            "region": self.region,
            "region_note": self.region_note,
            "block_size": cfg.block_size,
            "units": cfg.gqa,
            "estimator": cfg.estimator,
            "build_kernel": self.build_kernel_used,
            "seq_len": self.seq_len,
            "time_dense_s": times.get("dense"),
            "time_plan_s": times.get("plan"),
            "time_sparse_s": times.get("sparse"),
            "compile_s": sum(c["seconds"] for c in compiles) if compiles else 0.0,
        }


def _runnable(decision: Decision, q: torch.Tensor) -> Decision:
    """The cost model's choice, moved to a backend that can run these q: without triton no
    sparse kernel runs on the GPU (flex compiles through it too), and the triton kernel takes
    head dims up to 128 (flex takes more)."""
    if decision.backend != "triton":
        return decision
    if not triton_available():
        return Decision("dense", "triton is not installed: no sparse GPU kernel (pip install "
                                 "triton)")
    from adaptive_dllm.attention.block_sparse import MAX_HEAD_DIM

    if q.shape[-1] > MAX_HEAD_DIM:
        return Decision("flex", f"{decision.reason}; head dim {q.shape[-1]} > {MAX_HEAD_DIM}: "
                                "flex instead of the triton kernel")
    return decision


def _fits(plan: SparsePlan | None, q: torch.Tensor) -> bool:
    return plan is not None and plan.seq_len == q.shape[2] and plan.batch == q.shape[0]


class _Clock:
    """Time per phase without host syncs: CUDA events (read once in ``phases``) or host time.

    ``mark(kind)`` starts a step of that kind (ending the previous one). Plan builds are timed
    where they run and taken out of their step's time. A ``"build"`` step's plan cost is what the
    step took beyond a plain dense step (its time minus the median dense step), and at least its
    timed builds: so the scoring that the fused build kernel does inside attention counts as plan,
    not dense. Without plain dense steps to compare with, only the timed builds count.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[tuple[str, Any]] = []
        self.plans: list[tuple[int, Any, Any]] = []  # (step index, start, stop)

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def _elapsed(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def mark(self, kind: str) -> None:
        self.marks.append((kind, self._now()))

    def start_plan(self) -> tuple[int, Any]:
        return len(self.marks) - 1, self._now()

    def stop_plan(self, token: tuple[int, Any]) -> None:
        self.plans.append((token[0], token[1], self._now()))

    def phases(self, *, charge_build_excess: bool = True) -> dict[str, float]:
        """Seconds per phase; ``charge_build_excess=False`` (no plan was built in a build step,
        e.g. the run went dense) counts build steps as plain dense steps."""
        end = self._now()
        if self.cuda:
            end.synchronize()  # the one host read of the generation's timings
        timed: dict[int, float] = {}
        for step, a, b in self.plans:
            timed[step] = timed.get(step, 0.0) + self._elapsed(a, b)
        if not self.marks:  # no begin_step (likelihood mode): only the builds are timed
            return {"plan": sum(timed.values())}
        bounds = [m[1] for m in self.marks] + [end]
        steps = [(kind, self._elapsed(a, b))
                 for (kind, _), a, b in zip(self.marks, bounds[:-1], bounds[1:], strict=True)]
        plain = sorted(t for kind, t in steps if kind == "dense")
        typical = plain[len(plain) // 2] if plain else None
        out = {"dense": 0.0, "plan": timed.get(-1, 0.0), "sparse": 0.0}
        for i, (kind, t) in enumerate(steps):
            plan = timed.get(i, 0.0)
            if kind == "build" and typical is not None and charge_build_excess:
                plan = min(t, max(plan, t - typical))
            out["plan"] += plan
            out["sparse" if kind == "sparse" else "dense"] += max(0.0, t - plan)
        return out


def _compile_log_len() -> int:
    from adaptive_dllm.attention import flex

    return len(flex.COMPILE_LOG)


def _compile_log_since(start: int) -> list[dict[str, Any]]:
    from adaptive_dllm.attention import flex

    return flex.COMPILE_LOG[start:]
