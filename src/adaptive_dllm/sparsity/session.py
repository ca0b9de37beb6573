"""SparseSession: the per-generation attention hook that dispatches each forward.

Shape legend: B batch, H query heads, Hkv KV heads, U units per layer, L length, D head dim,
bs block size, N = ceil(L / bs).

The denoising loop calls ``begin_step(step, total)`` before every step and passes the session to
the model as ``attn``; the model calls ``session(layer, q, k, v, key_mask)`` in every layer. The
:class:`~adaptive_dllm.sparsity.schedule.Schedule` says what the forward is:

- ``dense``: the dense seam (``attend``, SDPA) unchanged;
- ``build``: dense attention, and the layer's plan built from the same q/k by the
  :class:`~adaptive_dllm.sparsity.planner.Planner` (in one fused kernel where the backend has
  one) and prepared by the backend, so the sparse steps only launch kernels;
- ``sparse``: the layer's plan (rebuilt from the current q/k when the length or batch changed);
- ``per_forward``: a new plan from this forward's own q/k, then that plan (likelihood scoring).

``select == 1`` (and whatever the cost model rejects under ``backend="auto"``) runs the dense
path exactly, and ``stats()`` says so.

Host syncs: none in a sparse step. Plan builds read nothing back except the one-time compile
timing; kept-block measurements stay on the device until :meth:`SparseSession.stats`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from adaptive_dllm._checks import check_int
from adaptive_dllm.attention.api import attend, get_backend
from adaptive_dllm.attention.backends import Backend, runs_fused_build
from adaptive_dllm.attention.mass import reduce_units
from adaptive_dllm.attention.plan import SparsePlan, plan_fits
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import MAX_HEAD_DIM, triton_available
from adaptive_dllm.sparsity.cost import CostModel, Decision
from adaptive_dllm.sparsity.planner import Planner, PlanSettings
from adaptive_dllm.sparsity.schedule import Schedule, StepKind
from adaptive_dllm.sparsity.tally import RunLabels, RunTally

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.models.config import ModelConfig
    from adaptive_dllm.sparsity.config import SparseConfig
    from adaptive_dllm.sparsity.stats import SparseStats

logger = logging.getLogger(__name__)


@dataclass
class _Installed:
    """A layer's plan, the backend's prepared data for it, and whether it has been counted."""

    plan: SparsePlan
    prepared: Any
    measured: bool = False


class SparseSession:
    """Attention hook for one generation (or one likelihood run): dispatch only.

    Args:
        planner: Builds the plans (scores, allocation).
        schedule: What each step is.
        backend: The sparse backend requested (``"auto"``: the cost model decides).
        cost_model: Break-even model for ``backend="auto"``.
        tally: Counts what ran and makes the :class:`~adaptive_dllm.sparsity.stats.SparseStats`.
        fused_build: The build step may use the backend's fused attention-and-score kernel.
        dense: ``select == 1``: run dense exactly.
    """

    def __init__(self, planner: Planner, schedule: Schedule, *, backend: str,
                 cost_model: CostModel | None, tally: RunTally, fused_build: bool,
                 dense: bool) -> None:
        self.planner = planner
        self.schedule = schedule
        self.requested_backend = backend
        self.cost_model = cost_model or CostModel()
        self.tally = tally
        self.fused_build = fused_build
        self.dense = dense
        self.decision: Decision | None = None
        self.backend: Backend | None = None
        self._installed: dict[int, _Installed] = {}
        self._kind: StepKind | None = None
        self._step: int | None = None

    @property
    def plan_builds(self) -> int:
        return self.tally.plan_builds

    @property
    def build_kernel_used(self) -> str | None:
        return self.tally.build_kernel

    def plan_of(self, layer: int) -> SparsePlan | None:
        """The plan ``layer`` runs now (None before its first build)."""
        installed = self._installed.get(layer)
        return None if installed is None else installed.plan

    # -- the loop's side -------------------------------------------------------------------
    def begin_step(self, step: int, total: int) -> None:
        """Called before the model call of every denoising step (0-based ``step``)."""
        if total != self.schedule.total_steps:
            self.schedule = Schedule(total, self.schedule.skip, self.schedule.refresh_steps,
                                     self.schedule.per_forward_plans)
        self._step = step
        self._kind = self.schedule.kind(step)
        self.tally.begin_step(self._kind)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of ``layer`` for this forward, as the schedule says."""
        if self.decision is None:
            self._start(q)
        if layer == 0:
            self.tally.forwards += 1
        if self.backend is None:
            return attend(q, k, v, key_mask=key_mask)
        kind = self.schedule.kind(self._step) if self._kind is None else self._kind
        if kind == "dense":
            return attend(q, k, v, key_mask=key_mask)
        if kind == "build":
            return self.build_step(layer, q, k, v, key_mask)
        if kind == "per_forward" or not plan_fits(self.plan_of(layer), q):
            self.build_plan(layer, q, k, key_mask)  # a new input, or the length/batch changed
        return self.run(layer, q, k, v, key_mask)

    # -- plans -------------------------------------------------------------------------------
    def build_step(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   key_mask: torch.Tensor | None) -> torch.Tensor:
        """The build step of ``layer``: its dense attention output (B, H, L, D), with the plan
        built and installed on the way; one fused kernel where the backend has one, else dense
        SDPA then :meth:`build_plan`."""
        if self.decision is None:
            self._start(q)
        backend = self.backend
        if not (self.fused_build and backend is not None and runs_fused_build(backend, q)):
            self.tally.build_kernel = "separate"
            out = attend(q, k, v, key_mask=key_mask)
            self.build_plan(layer, q, k, key_mask)
            return out
        self.tally.build_kernel = "fused"
        out, per_head = backend.attend_and_score(  # type: ignore[attr-defined]
            q, k, v, block_size=self.planner.settings.block_size, key_mask=key_mask)
        self.build_plan(layer, q, k, key_mask,
                        scores=reduce_units(per_head, k.shape[1], self.planner.settings.gqa))
        return out

    def build_plan(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                   key_mask: torch.Tensor | None, *,
                   scores: torch.Tensor | None = None) -> SparsePlan:
        """Build, prepare and install ``layer``'s plan from its q/k (see
        :meth:`~adaptive_dllm.sparsity.planner.Planner.plan`)."""
        if self.decision is None:
            self._start(q)
        token = self.tally.clock.start_plan()
        plan = self.planner.plan(layer, q, k, key_mask, scores=scores)
        prepared = None if self.backend is None else self.backend.prepare(plan, q.shape[1])
        self._installed[layer] = _Installed(plan, prepared)
        self.tally.plan_builds += 1
        self.tally.clock.stop_plan(token)
        return plan

    def run(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            key_mask: torch.Tensor | None) -> torch.Tensor:
        """Execute ``layer``'s installed plan with the session's backend (counting its kept
        blocks the first time it runs)."""
        installed = self._installed[layer]
        if not installed.measured:
            installed.measured = True
            self.tally.measure(installed.plan)
        return attend(q, k, v, key_mask=key_mask, plan=installed.plan, backend=self.backend,
                      prepared=installed.prepared)

    # -- start and report --------------------------------------------------------------------
    def _start(self, q: torch.Tensor) -> None:
        self.decision = self._decide(q)
        if self.decision.backend != "dense":
            self.backend = get_backend(self.decision.backend)
            self.tally.watch_compiles(self.backend)
        self.tally.start(q, self._kind)
        logger.info("sparse attention: %s (%s)", self.decision.backend, self.decision.reason)

    def _decide(self, q: torch.Tensor) -> Decision:
        if self.dense:
            return Decision("dense", "select=1 keeps every block: dense attention")
        requested = self.requested_backend
        if requested == "auto":
            decision = self.cost_model.decide(
                select=self.planner.settings.select, seq_len=q.shape[2],
                device_type=q.device.type, sparse_steps=self.schedule.paying_steps)
            return _runnable(decision, q)
        # Checked before any step runs, not at the first sparse one.
        problem = get_backend(requested).supports(device_type=q.device.type,
                                                  head_dim=q.shape[-1],
                                                  block_size=self.planner.settings.block_size)
        if problem and requested == "triton":
            raise AdllmError(problem)
        return Decision(requested, f"backend {requested!r} requested")

    def stats(self) -> SparseStats:
        """What ran: backend and why, step counts, keep ratios, time per phase."""
        return self.tally.stats(self.decision, self.schedule, self.planner)


def build_session(config: SparseConfig, model_config: ModelConfig, total_steps: int, *,
                  gen_length: int | None = None, block_starts: tuple[int, ...] = (),
                  cost_model: CostModel | None = None) -> SparseSession:
    """The session of one generation: ``config`` bound to ``model_config`` (its importance
    checked against the model), ``total_steps`` denoising steps, ``gen_length`` generated
    tokens at the end of the sequence (None: one joint budget) and the first steps of LLaDA's
    later semi-autoregressive blocks (rebuild points with ``refresh="block"``)."""
    if gen_length is not None:
        check_int("gen_length", gen_length, minimum=0)
    weights = config.weights(model_config)  # (layers, units); checks the importance
    units = config.units_per_layer(model_config)
    region, region_note = config.region, ""
    if region == "separate" and gen_length is None:
        region = "joint"
        region_note = "generation length not given: one joint budget over all keys"
    refresh = tuple(block_starts) if config.refresh == "block" else ()
    schedule = Schedule(total_steps, config.skip, refresh, per_forward_plans=config.likelihood)
    settings = PlanSettings(
        select=config.select, min_keep_ratio=config.min_keep_ratio, budget=config.budget,
        block_size=config.block_size, gqa=config.gqa, estimator=config.estimator,
        group=model_config.n_heads // units,
        gen_length=gen_length if region == "separate" else None)
    labels = RunLabels(mode=config.mode, requested_backend=config.backend,
                       likelihood=config.likelihood, select=config.select,
                       block_size=config.block_size, units=config.gqa,
                       estimator=config.estimator, region=region, region_note=region_note)
    return SparseSession(Planner(weights, settings), schedule, backend=config.backend,
                         cost_model=cost_model, tally=RunTally(labels),
                         fused_build=config.build_kernel == "fused" and config.estimator == "exact",
                         dense=config.is_dense)


def _runnable(decision: Decision, q: torch.Tensor) -> Decision:
    """The cost model's choice, moved to a backend that can run these q: without triton no
    sparse kernel runs on the GPU (flex compiles through it too), and the triton kernel takes
    head dims up to 128 (flex takes more)."""
    if decision.backend != "triton":
        return decision
    if not triton_available():
        return Decision("dense", "triton is not installed: no sparse GPU kernel (pip install "
                                 "triton)")
    if q.shape[-1] > MAX_HEAD_DIM:
        return Decision("flex", f"{decision.reason}; head dim {q.shape[-1]} > {MAX_HEAD_DIM}: "
                                "flex instead of the triton kernel")
    return decision
