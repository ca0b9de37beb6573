"""The SparseD schedule: what each forward is (dense, build, sparse, or its own plan).

With T denoising steps and ``skip`` in [0, 1):

- ``dense_steps = min(T, max(1, ceil(skip * T)))``: steps ``[0, dense_steps)`` run dense
  attention, so at least a ``skip`` fraction of the steps is dense and at least one dense step
  exists to measure the scores from (``ceil`` with a 1e-9 tolerance, so 0.2 * 10 is 2 steps).
- The plan is built during the **last dense step** (``dense_steps - 1``) from that step's own
  post-RoPE queries and keys; the step's output is still the dense one.
- Steps ``[dense_steps, T)`` run sparse with that plan. A plan is rebuilt (from the current q/k,
  immediately used) whenever the sequence length or batch size it was built for changes.

Upstream SparseD runs steps ``0 .. int(T * skip) + 1`` dense (``int(T * skip) + 2`` steps: 27 of
128 at skip 0.2, 53 of 256) and builds at ``int(T * skip) + 1``. Here 128 steps at skip 0.2 give
26 dense and 102 sparse steps: one dense step fewer, and ``skip = 0`` really means a single dense
step (upstream: two).

The step index counts across LLaDA's semi-autoregressive blocks (the sequence length is constant
during a generation), and Dream's single pass is the one-block case.

**Refresh.** Upstream reuses the plan until the end, across LLaDA's blocks, although a block that
was all mask tokens when the plan was built holds text later (upstream_reference.md §4 item 10).
With ``refresh_steps`` (the first step of every later semi-autoregressive block), each such step
in the sparse phase is again a "build" step: it runs dense and rebuilds the plan from its own q/k.

**Per forward.** Likelihood scoring (``SparseConfig(likelihood=True)``) has no denoising loop:
every forward sees another input, so every forward builds its own plans from its own q/k and runs
them (:meth:`Schedule.per_forward_plans`). Forwards outside a denoising loop otherwise (no
``begin_step``) reuse the plans while they fit, like sparse steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from adaptive_dllm._checks import check_int

#: What a forward does: dense attention; dense attention and a new plan; the current plan
#: (rebuilt if the length or batch changed); a new plan from its own q/k, then that plan.
StepKind = Literal["dense", "build", "sparse", "per_forward"]


def dense_step_count(total_steps: int, skip: float) -> int:
    """Dense steps before the switch: ``min(T, max(1, ceil(skip * T)))``."""
    check_int("total_steps", total_steps)
    return min(total_steps, max(1, math.ceil(skip * total_steps - 1e-9)))


@dataclass(frozen=True)
class Schedule:
    """Dense/build/sparse step kinds for one generation.

    Attributes:
        total_steps: T, denoising steps of the generation.
        skip: Fraction of dense steps requested.
        refresh_steps: Steps of the sparse phase that run dense and rebuild the plan.
        per_forward_plans: Every forward builds and runs its own plan (likelihood scoring).
    """

    total_steps: int
    skip: float
    refresh_steps: tuple[int, ...] = ()
    per_forward_plans: bool = False

    @property
    def dense_steps(self) -> int:
        return dense_step_count(self.total_steps, self.skip)

    @property
    def sparse_steps(self) -> int:
        return self.total_steps - self.dense_steps

    @property
    def paying_steps(self) -> int:
        """Forwards that run a plan, for the cost model: one per forward for per-forward plans
        (each must pay back its own build), else the sparse steps."""
        return 1 if self.per_forward_plans else self.sparse_steps

    @property
    def build_step(self) -> int | None:
        """The step whose q/k build the plan, or None when every step is dense."""
        return self.dense_steps - 1 if self.sparse_steps > 0 else None

    def kind(self, step: int | None) -> StepKind:
        """What the session does at ``step`` (0-based; None outside a denoising loop)."""
        if self.per_forward_plans:
            return "per_forward"
        if step is None:
            return "sparse"
        if step < self.dense_steps - 1:
            return "dense"
        if step == self.dense_steps - 1:
            return "build" if self.sparse_steps > 0 else "dense"
        return "build" if step in self.refresh_steps else "sparse"
