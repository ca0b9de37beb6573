"""What a sparse run did: :class:`SparseStats` (frozen, JSON-ready), :func:`summary_stats` (the
keys of every one-line report, also for a dense run) and the phase clock.

``SparseStats`` is the one definition of the run statistics: every report (the CLI's JSON and
summary line, the fidelity rows, the benchmark records) derives its keys from its fields, so a
new statistic is one new field here (tagged ``_brief()`` when every one-line report should carry
it, ``_detail()`` when the detailed reports should). It supports read access by key
(``stats["realized_keep_ratio"]``), like the dict it replaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch


def _brief() -> Any:
    """A field every one-line report carries (the CLI's summary, the fidelity rows)."""
    return field(metadata={"report": "brief"})


def _detail() -> Any:
    """A field the detailed reports (fidelity rows) carry as well."""
    return field(metadata={"report": "detail"})


@dataclass(frozen=True, eq=False)  # eq: Mapping's, so a SparseStats equals its dict
class SparseStats(Mapping[str, Any]):
    """What ran: backend and why, step counts, keep ratios, time per phase.

    ``realized_keep_ratio`` is measured from the plans that actually ran (None when none did);
    ``allocator_keep_ratio`` is what the allocator promised for the last plan shape. Fields tagged
    ``brief`` are what every one-line report carries, ``detail`` what detailed reports add
    (:meth:`summary_keys`).
    """

    mode: str
    backend: str = _brief()
    backend_reason: str = _brief()
    requested_backend: str
    likelihood: bool
    total_steps: int
    dense_steps: int = _brief()
    sparse_steps: int = _brief()
    switch_step: int | None
    refresh_steps: int = _detail()
    forwards: int
    plan_builds: int = _detail()
    target_keep_ratio: float = _brief()
    allocator_keep_ratio: float | None = _detail()
    realized_keep_ratio: float | None = _brief()
    realized_keep_ratio_prompt: float | None = _detail()
    realized_keep_ratio_gen: float | None = _detail()
    allocation_note: str = _detail()
    region: str = _detail()
    region_note: str = _detail()
    block_size: int
    units: str
    estimator: str
    build_kernel: str | None
    seq_len: int | None = _detail()
    time_dense_s: float | None
    time_plan_s: float | None
    time_sparse_s: float | None
    compile_s: float

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (JSON-ready: numbers, strings, None)."""
        return asdict(self)

    @classmethod
    def summary_keys(cls, *, detail: bool = False) -> tuple[str, ...]:
        """Fields one-line reports carry; with ``detail`` also those detailed reports add."""
        tags = ("brief", "detail") if detail else ("brief",)
        return tuple(f.name for f in fields(cls) if f.metadata.get("report") in tags)

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class PhaseClock:
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

    def phases(self, *, charge_build_excess: bool = True, dense_run: bool = False
               ) -> dict[str, float]:
        """Seconds per phase; ``charge_build_excess=False`` (no plan was built in a build step)
        counts build steps as plain dense steps; ``dense_run`` (the session decided to run
        dense) counts every step as dense, whatever the schedule called it."""
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
            phase = "sparse" if kind == "sparse" and not dense_run else "dense"
            out[phase] += max(0.0, t - plan)
        return out


def summary_stats(sparse_stats: Mapping[str, Any] | None, steps: int) -> dict[str, Any]:
    """The keys every generation report carries (:meth:`SparseStats.summary_keys`) from a
    session's stats; a dense run (None) reports ``steps`` dense steps and nothing kept."""
    if sparse_stats is None:
        dense = {"backend": "dense", "backend_reason": "no --sparse", "dense_steps": steps,
                 "sparse_steps": 0, "target_keep_ratio": 1.0, "realized_keep_ratio": None}
        return {k: dense.get(k) for k in SparseStats.summary_keys()}
    return {k: sparse_stats.get(k) for k in SparseStats.summary_keys()}
