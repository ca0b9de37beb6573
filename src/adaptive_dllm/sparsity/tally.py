"""RunTally: what a sparse session counts while it runs, turned into :class:`SparseStats`.

The session only dispatches; this object keeps the step kinds, forwards, plan builds, the
kept blocks of every plan that ran (on the device until the report), the phase clock and the
backend's compile log, and writes the report once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from adaptive_dllm.attention.backends import Backend
from adaptive_dllm.attention.plan import SparsePlan
from adaptive_dllm.sparsity.cost import Decision
from adaptive_dllm.sparsity.schedule import Schedule, StepKind
from adaptive_dllm.sparsity.stats import PhaseClock, SparseStats

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.sparsity.planner import Planner


@dataclass(frozen=True)
class RunLabels:
    """The settings a report repeats (from the SparseConfig and the region decision)."""

    mode: str
    requested_backend: str
    likelihood: bool
    select: float
    block_size: int
    units: str
    estimator: str
    region: str
    region_note: str


class RunTally:
    """Counters of one session's run."""

    def __init__(self, labels: RunLabels) -> None:
        self.labels = labels
        self.step_kinds: list[StepKind] = []
        self.forwards = 0
        self.plan_builds = 0
        self.build_kernel: str | None = None
        self.seq_len: int | None = None
        self.clock: PhaseClock | None = None
        self._measured: list[tuple[torch.Tensor, int, int]] = []  # per plan that ran
        self._backend: Backend | None = None
        self._compiles_before = 0

    def start(self, q: torch.Tensor, kind: StepKind | None) -> None:
        """The first forward: its length, and the clock on q's device."""
        self.seq_len = q.shape[2]
        self.clock = PhaseClock(q.device)
        if kind is not None:
            self.clock.mark(kind)

    def begin_step(self, kind: StepKind) -> None:
        self.step_kinds.append(kind)
        if self.clock is not None:
            self.clock.mark(kind)

    def watch_compiles(self, backend: Backend) -> None:
        """Count the compiles ``backend`` logs from now on as this run's."""
        self._backend = backend
        self._compiles_before = len(backend.compile_log)

    def measure(self, plan: SparsePlan) -> None:
        """Count ``plan``'s kept prompt and generation blocks (stays on the device)."""
        idx = plan.indices
        kept = torch.stack([((idx >= 0) & (idx < plan.prompt_blocks)).sum(),
                            (idx >= plan.prompt_blocks).sum()])
        self._measured.append((kept, *plan.total_blocks()))

    def _realized(self) -> tuple[float | None, float | None, float | None]:
        if not self._measured:
            return None, None, None
        kept = torch.stack([m[0] for m in self._measured]).sum(0).tolist()  # one host read
        slots_p = sum(m[1] for m in self._measured)
        slots_g = sum(m[2] for m in self._measured)
        return ((kept[0] + kept[1]) / (slots_p + slots_g),
                kept[0] / slots_p if slots_p else None,
                kept[1] / slots_g if slots_g else None)

    def stats(self, decision: Decision | None, schedule: Schedule, planner: Planner) -> SparseStats:
        """The report (one host read of the kept-block counts and the clock)."""
        lab = self.labels
        dense_run = decision is None or decision.backend == "dense"
        kinds = self.step_kinds
        sparse_steps = 0 if dense_run else sum(kd in ("sparse", "per_forward") for kd in kinds)
        realized, realized_prompt, realized_gen = self._realized()
        allocator, note = planner.allocator_summary()
        times: dict[str, float] = {}
        if self.clock is not None:
            times = self.clock.phases(charge_build_excess=not dense_run and self.plan_builds > 0,
                                      dense_run=dense_run)
        compiles = () if self._backend is None else \
            self._backend.compile_log[self._compiles_before:]
        return SparseStats(
            mode=lab.mode,
            backend="dense" if decision is None else decision.backend,
            backend_reason="no forward ran" if decision is None else decision.reason,
            requested_backend=lab.requested_backend,
            likelihood=lab.likelihood,
            total_steps=schedule.total_steps,
            dense_steps=len(kinds) - sparse_steps,
            sparse_steps=sparse_steps,
            switch_step=None if dense_run else schedule.dense_steps,
            refresh_steps=0 if dense_run else sum(
                s >= schedule.dense_steps for s in schedule.refresh_steps),
            forwards=self.forwards,
            plan_builds=self.plan_builds,
            target_keep_ratio=lab.select,
            allocator_keep_ratio=allocator,
            realized_keep_ratio=realized,
            realized_keep_ratio_prompt=realized_prompt,
            realized_keep_ratio_gen=realized_gen,
            allocation_note=note,
            region=lab.region,
            region_note=lab.region_note,
            block_size=lab.block_size,
            units=lab.units,
            estimator=lab.estimator,
            build_kernel=self.build_kernel,
            seq_len=self.seq_len,
            time_dense_s=times.get("dense"),
            time_plan_s=times.get("plan"),
            time_sparse_s=times.get("sparse"),
            compile_s=sum((c.seconds for c in compiles), 0.0),
        )
