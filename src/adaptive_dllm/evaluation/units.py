"""One unit of a task evaluation: a batch of items under one (mode, select) condition.

Shape legend: B items in the batch.

:func:`run_unit` generates (or estimates log-likelihoods) for the batch and returns one record per
item (see :mod:`~adaptive_dllm.evaluation.report` for the fields). It is what every torchrun
rank executes; :mod:`~adaptive_dllm.evaluation.runner` decides which units run where.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.report import metric_value
from adaptive_dllm.evaluation.tasks.base import Task, TaskItem
from adaptive_dllm.generation.prompts import prompt_ids

__all__ = ["LoglikelihoodEstimator", "UnitContext", "cut_at_stop", "derive_seed", "run_unit"]

# estimate(model, prefix_ids, continuation_ids, *, mc_num, batch_size, seed, sparse) -> log p
LoglikelihoodEstimator = Callable[..., float]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (stable across runs, platforms and processes)."""
    digest = hashlib.sha256("|".join(map(str, ("adllm-eval", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop sequence."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(ends)] if ends else text



@dataclass
class UnitContext:
    """Everything a unit needs, resolved once."""

    model: nn.Module
    tokenizer: Any
    task: Task
    settings: Any  # runner.RunSettings
    sampler: dict[str, Any]
    sparse: dict[str, Any]
    chat: bool
    importance: Any
    estimator: LoglikelihoodEstimator | None


def _sparse_config(ctx: UnitContext, mode: str, select: float) -> Any:
    if mode == "dense":
        return None
    from adaptive_dllm.sparsity.config import SparseConfig

    return SparseConfig(select=select, importance=ctx.importance if mode == "adaptive" else None,
                        **ctx.sparse)


def run_unit(ctx: UnitContext, batch: Sequence[TaskItem], mode: str,
             select: float) -> list[dict[str, Any]]:
    """Records of every item of ``batch`` under (mode, select)."""
    cfg = _sparse_config(ctx, mode, select)
    if ctx.task.kind == "loglikelihood":
        return [_loglikelihood_item(ctx, item, cfg, mode, select) for item in batch]
    return _generate_batch(ctx, batch, cfg, mode, select)


def _generate_batch(ctx: UnitContext, batch: Sequence[TaskItem], cfg: Any, mode: str,
                    select: float) -> list[dict[str, Any]]:
    from adaptive_dllm.generation.api import generate

    n = len(batch)
    outputs: list[list[str]] = [[] for _ in batch]
    tokens, seconds, keeps, steps, positions = [0.0] * n, 0.0, [], 0, 0
    for k in range(ctx.settings.samples):
        seed = derive_seed(ctx.settings.seed, batch[0].id, k)
        out = generate(ctx.model, ctx.tokenizer, [it.prompt for it in batch], sparse=cfg,
                       chat=ctx.chat, seed=seed, **ctx.sampler)
        texts = out.text if isinstance(out.text, list) else [out.text]
        rows = out.ids.tolist()  # one device-to-host copy per generation, not one per item
        for i, text in enumerate(texts):
            outputs[i].append(cut_at_stop(text or "", ctx.task.stop))
            tokens[i] += _generated_tokens(rows[i], ctx)
        # metric_value: the stats may be a dict or a typed object with to_dict().
        seconds += float(metric_value(out.stats, "total_s"))
        keeps.append(_keep(metric_value(out.stats, "sparse")))
        steps += int(metric_value(out.stats, "steps"))
        positions += int(metric_value(out.stats, "gen_length"))
    keep = None if any(v is None for v in keeps) else sum(keeps) / len(keeps)
    return [_record(ctx, item, mode, select, outputs[i], outputs[i],
                    gen_tokens=tokens[i] / ctx.settings.samples, forwards=steps,
                    seconds=seconds / n, positions=positions, keep=keep)
            for i, item in enumerate(batch)]


def _generated_tokens(row: list[int], ctx: UnitContext) -> int:
    """Tokens generated before the first EOS (mask ids left over are not counted)."""
    eos = getattr(ctx.tokenizer, "eos_id", None)
    if eos is None:
        eos = ctx.model.config.eos_id
    if eos is not None and eos in row:
        row = row[: row.index(eos)]
    return sum(1 for t in row if t != ctx.model.config.mask_id)


def _keep(stats: Any) -> float | None:
    """Realised keep ratio of a generation: the mean over its sparse forwards, full ones (the
    refresh plans' ``realized_keep_ratio``) and cached ones (``cached_keep_ratio``), weighted by
    their step counts; 1.0 when no plan ran (dense)."""
    if stats is None or metric_value(stats, "backend") == "dense":
        return 1.0
    full = metric_value(stats, "realized_keep_ratio")
    cached, n_cached = metric_value(stats, "cached_keep_ratio"), metric_value(stats, "cached_sparse_steps")
    if cached is None or not n_cached:  # no cache, or every cached step ran dense
        return 1.0 if full is None else float(full)
    n_full = metric_value(stats, "sparse_steps") or 0
    if full is None or not n_full:
        return float(cached)
    return (n_full * float(full) + n_cached * float(cached)) / (n_full + n_cached)


def _loglikelihood_item(ctx: UnitContext, item: TaskItem, cfg: Any, mode: str,
                        select: float) -> dict[str, Any]:
    if not item.choices:
        raise AdllmError(f"item {item.id!r} of task {ctx.task.name!r} has no choices")
    prefix = prompt_ids(ctx.tokenizer, item.prompt, chat=ctx.chat)
    started = time.perf_counter()
    lls = []
    for j, choice in enumerate(item.choices):
        cont = ctx.tokenizer.encode(choice, add_special_tokens=False)
        assert ctx.estimator is not None
        lls.append(float(ctx.estimator(
            ctx.model, prefix, cont, mc_num=ctx.settings.mc_num,
            batch_size=ctx.settings.batch_size, seed=derive_seed(ctx.settings.seed, item.id, j),
            sparse=cfg)))
    return _record(ctx, item, mode, select, lls, [], gen_tokens=None,
                   forwards=len(item.choices) * ctx.settings.mc_num,
                   seconds=time.perf_counter() - started, positions=0,
                   keep=1.0 if cfg is None else None)


def _record(ctx: UnitContext, item: TaskItem, mode: str, select: float, scored: Sequence[Any],
            outputs: Sequence[str], **numbers: Any) -> dict[str, Any]:
    metrics = dict(ctx.task.score(item, scored))
    if "correct" not in metrics:
        raise AdllmError(f"task {ctx.task.name!r} scored item {item.id!r} without 'correct'")
    record = {"id": item.id, "mode": mode, "select": select, "metrics": metrics, **numbers,
              "outputs": list(outputs)}
    if ctx.task.kind == "loglikelihood":
        record["loglikelihoods"] = list(scored)
    return record
