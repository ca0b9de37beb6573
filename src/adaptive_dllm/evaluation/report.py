"""Per-item records of a task evaluation: the resumable JSONL file, aggregation and the table.

The results file (``adllm eval task --out FILE.jsonl``) is one JSON object per line:

* line 1, the header: ``{"adllm_task_results": 1, "settings": {...}}`` where ``settings`` is
  everything that changes a result (the task's own settings, the model, the sampler options, the
  modes and selects, the sparse options and the importance file's hash);
* then one record per finished (item, mode, select), written and flushed as soon as it is done:
  ``{"id", "mode", "select", "metrics": {...}, "gen_tokens", "forwards", "seconds", "positions",
  "keep", "outputs"}``.

A run killed while writing leaves at most one partial last line; :func:`open_results` drops it
and resumes after the last complete record. Records are keyed by (id, mode, select), so a resumed
run skips exactly what is already there and the final aggregate is that of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adaptive_dllm._io import dumps_json, to_jsonable
from adaptive_dllm.errors import AdllmError

__all__ = ["ConditionResult", "ResultsWriter", "TaskReport", "aggregate", "format_table",
           "metric_value", "open_results", "record_key", "wilson_interval"]

HEADER_KEY = "adllm_task_results"
Key = tuple[str, str, float]


def wilson_interval(successes: float, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """95% (by default) Wilson score interval of a proportion ``successes / n``.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or n
    successes, which matters for the small item counts of quick runs. ``(0, 1)`` for ``n = 0``.
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def record_key(record: Mapping[str, Any]) -> Key:
    """(item id, mode, select) of a record; select rounded so JSON round trips compare equal."""
    return str(record["id"]), str(record["mode"]), round(float(record["select"]), 9)


def metric_value(stats: Any, key: str) -> Any:
    """``stats[key]`` for a stats dict or a typed stats object (``to_dict()`` / attribute)."""
    if stats is None:
        return None
    if isinstance(stats, Mapping):
        return stats.get(key)
    if hasattr(stats, "to_dict"):
        return stats.to_dict().get(key)
    return getattr(stats, key, None)


class ResultsWriter:
    """Appends records to an open results file, one flushed line each (rank 0 only)."""

    def __init__(self, handle: IO[str] | None) -> None:
        self._handle = handle

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        if self._handle is None:
            return
        for record in records:
            self._handle.write(dumps_json(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def open_results(path: Path | None, settings: Mapping[str, Any], *,
                 write: bool = True) -> tuple[dict[Key, dict[str, Any]], ResultsWriter]:
    """Records already in ``path`` (by key) and a writer that appends to it.

    A new file gets the header. An existing one must carry the same settings; a partial last line
    (a run killed while writing) is cut off. ``write=False`` (ranks other than 0) only reads.

    Raises:
        AdllmError: the file is not a results file, was written with other settings, or has a
            malformed line before its last one.
    """
    if path is None:
        return {}, ResultsWriter(None)
    header = {HEADER_KEY: 1, "settings": to_jsonable(settings)}
    done: dict[Key, dict[str, Any]] = {}
    keep_bytes = 0
    if path.is_file() and path.stat().st_size > 0:
        done, keep_bytes = _read_results(path, header)
    if not write:
        return done, ResultsWriter(None)
    if keep_bytes:
        handle = path.open("r+", encoding="utf-8")
        handle.truncate(keep_bytes)  # drop a partial line left by a killed run
        handle.seek(keep_bytes)
    else:
        handle = path.open("w", encoding="utf-8")
        handle.write(dumps_json(header) + "\n")
        handle.flush()
    return done, ResultsWriter(handle)


def _read_results(path: Path, header: dict[str, Any]) -> tuple[dict[Key, dict[str, Any]], int]:
    """(records by key, byte length of the complete lines) of an existing results file."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail_partial = not data.endswith(b"\n")
    complete = lines[:-1]  # the last element is b"" or a partial line
    if not complete:
        raise AdllmError(f"--out {path} is not an adllm task results file (no header line); "
                         "choose another --out or delete it")
    try:
        first = json.loads(complete[0])
    except ValueError:  # not JSON, or not UTF-8 (a binary file)
        first = None
    if (not isinstance(first, dict) or HEADER_KEY not in first
            or not isinstance(first.get("settings"), dict)):
        raise AdllmError(f"--out {path} is not an adllm task results file; "
                         "choose another --out or delete it")
    if first != header:
        diff = _differences(first.get("settings", {}), header["settings"])
        raise AdllmError(f"--out {path} was written with other settings ({diff}); rerun with the "
                         "same settings to resume, or choose another --out")
    done: dict[Key, dict[str, Any]] = {}
    for number, line in enumerate(complete[1:], start=2):
        try:
            record = json.loads(line)
            done[record_key(record)] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise AdllmError(f"--out {path}: line {number} is not a valid record; "
                             "delete the file or choose another --out") from None
    keep = len(data) - (len(lines[-1]) if tail_partial else 0)
    return done, keep


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:2]]
    more = f" and {len(keys) - 2} more" if len(keys) > 2 else ""
    return "; ".join(shown) + more if shown else "header differs"


@dataclass(frozen=True)
class ConditionResult:
    """Aggregate of one (mode, select) over the evaluated items.

    ``accuracy`` is the mean of the items' ``"correct"``; ``ci95`` its Wilson interval;
    ``metrics`` the mean of every numeric per-item metric; ``tokens_per_s`` generated positions
    (``gen_length`` per item and sample) over generation wall time; ``realized_keep_ratio`` the
    item-weighted mean of the sessions' realised keep ratios (1.0 when no plan ran).
    """

    mode: str
    select: float
    n: int
    accuracy: float | None
    ci95: tuple[float, float]
    metrics: dict[str, float] = field(default_factory=dict)
    mean_gen_tokens: float | None = None
    tokens_per_s: float | None = None
    forwards_per_item: float | None = None
    realized_keep_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The issue's JSON shape exactly; the two other per-item means of the table (generated
        tokens, forwards) go into ``metrics`` with the task's own per-item means."""
        extra = {"mean_gen_tokens": self.mean_gen_tokens, "forwards_per_item": self.forwards_per_item}
        metrics = {**self.metrics, **{k: v for k, v in extra.items() if v is not None}}
        return {"mode": self.mode, "select": self.select, "n": self.n, "accuracy": self.accuracy,
                "ci95": list(self.ci95), "metrics": metrics, "tokens_per_s": self.tokens_per_s,
                "realized_keep_ratio": self.realized_keep_ratio}


@dataclass(frozen=True)
class TaskReport:
    """What ``adllm eval task --json`` prints (:meth:`to_dict`), plus the per-item records."""

    task: str
    model: str | None
    results: tuple[ConditionResult, ...]
    records: tuple[dict[str, Any], ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # The sampler options that ran (the task's defaults plus the user's, cache and threshold
        # included), so that two --json outputs say which cell each is.
        return {"task": self.task, "model": self.model,
                "sampler": dict(self.settings.get("sampler") or {}),
                "results": [r.to_dict() for r in self.results]}


def aggregate(records: Sequence[Mapping[str, Any]],
              conditions: Sequence[tuple[str, float]]) -> tuple[ConditionResult, ...]:
    """One :class:`ConditionResult` per condition, over the records of that condition."""
    out = []
    for mode, select in conditions:
        rows = [r for r in records if r["mode"] == mode and round(float(r["select"]), 9)
                == round(select, 9)]
        out.append(_aggregate_rows(mode, select, rows))
    return tuple(out)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _aggregate_rows(mode: str, select: float, rows: Sequence[Mapping[str, Any]]) -> ConditionResult:
    n = len(rows)
    correct = [float(r["metrics"].get("correct", 0.0)) for r in rows]
    names = sorted({k for r in rows for k, v in r["metrics"].items()
                    if isinstance(v, (int, float)) and v is not None})
    metrics = {}
    for name in names:
        values = [float(r["metrics"][name]) for r in rows
                  if isinstance(r["metrics"].get(name), (int, float))]
        metrics[name] = sum(values) / len(values)
    seconds = sum(float(r.get("seconds") or 0.0) for r in rows)
    positions = sum(int(r.get("positions") or 0) for r in rows)
    keeps = [float(r["keep"]) for r in rows if r.get("keep") is not None]
    return ConditionResult(
        mode=mode, select=select, n=n, accuracy=_mean(correct),
        ci95=wilson_interval(sum(correct), n),
        metrics=metrics,
        mean_gen_tokens=_mean([float(r["gen_tokens"]) for r in rows
                               if r.get("gen_tokens") is not None]),
        tokens_per_s=positions / seconds if seconds > 0 and positions else None,
        forwards_per_item=_mean([float(r["forwards"]) for r in rows if r.get("forwards") is not None]),
        realized_keep_ratio=_mean(keeps),
    )


def format_table(report: TaskReport) -> str:
    """A plain-text table: one row per (mode, select)."""
    head = ["mode", "select", "n", "accuracy", "95% CI", "gen tokens", "tokens/s", "forwards",
            "keep"]
    lines = [head]
    for r in report.results:
        lines.append([
            r.mode, f"{r.select:g}", str(r.n), _fmt(r.accuracy, ".3f"),
            f"[{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]", _fmt(r.mean_gen_tokens, ".1f"),
            _fmt(r.tokens_per_s, ".1f"), _fmt(r.forwards_per_item, ".1f"),
            _fmt(r.realized_keep_ratio, ".3f"),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True)))
                     for line in lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
