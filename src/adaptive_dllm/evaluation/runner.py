"""Run an evaluation task over every mode x select, batched, resumable and sharded over ranks.

Shape legend: B items per generation batch, G generated tokens.

:func:`evaluate_task` takes a :class:`~adaptive_dllm.evaluation.tasks.base.Task` and evaluates
the same items under dense attention and under every (``uniform`` | ``adaptive``, ``select``)
condition. The work is cut into *units*: one batch of consecutive items (``batch_size`` of them,
fixed by the item order alone) under one condition. Units are dealt round-robin over torchrun
ranks; after every round the ranks gather their records and rank 0 appends them to the results
file (:mod:`~adaptive_dllm.evaluation.report`), so a killed run loses at most the units in
flight, and a rerun skips every (item, mode, select) already recorded.

Results do not depend on the number of ranks or on resuming: a unit's batch composition depends
only on the item order and ``batch_size``, and every unit is seeded from the base seed and its
first item id. Stochastic sampling (temperature > 0, random remasking, ...) is generated item by
item, so every item gets its own seed (``derive_seed(seed, item id, sample)``) and its result does
not depend on ``batch_size`` either. Greedy batches are exact for dense attention (left padding is
masked); sparse plans of left-padded rows share the batch's block grid, so sparse results can
depend on ``batch_size`` (which is therefore part of the settings a resumed run must match).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from torch import nn

from adaptive_dllm._distributed import Ranks, gather_objects, shard
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.context import check_context
from adaptive_dllm.evaluation.report import (
    ResultsWriter,
    TaskReport,
    aggregate,
    open_results,
    record_key,
)
from adaptive_dllm.evaluation.tasks.base import Task, TaskItem
from adaptive_dllm.evaluation.units import (
    LoglikelihoodEstimator,
    UnitContext,
    cut_at_stop,
    derive_seed,
    run_unit,
)
from adaptive_dllm.models.checkpoints import record_path
from adaptive_dllm.sparsity.config import SparseConfig, measuring_backend

__all__ = ["MODES", "LoglikelihoodEstimator", "Mode", "RunSettings", "cut_at_stop", "derive_seed",
           "evaluate_task", "has_chat_template", "task_sampler"]

logger = logging.getLogger(__name__)

Mode = Literal["dense", "uniform", "adaptive"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class RunSettings:
    """How :func:`evaluate_task` runs a task (everything but the task, the model and the data).

    Attributes:
        modes: ``dense``, ``uniform``, ``adaptive``; dense runs once (select 1), the sparse
            modes once per select.
        selects: target keep ratios in (0, 1] of the sparse modes.
        sampler: sampler options (``steps``, ``gen_length``, ...), over the task's defaults.
        sparse: other :class:`~adaptive_dllm.sparsity.config.SparseConfig` options (``skip``,
            ``block_size``, ``backend`` ...); ``backend`` defaults to
            :func:`~adaptive_dllm.sparsity.config.measuring_backend` (``flex`` on CUDA, ``gather``
            elsewhere), so that sparse attention really runs (``auto`` may pick dense).
        batch_size: items per generation batch (and per estimator batch for log-likelihoods).
        samples: completions per item (generate tasks; pass@k).
        seed: base seed; each item's seed is derived from it and the item id.
        chat: wrap prompts in the tokenizer's chat template; None = when it has one.
        limit: evaluate the first ``limit`` items only (not part of the resume check, so a
            larger limit extends an earlier run).
        mc_num: Monte-Carlo samples per log-likelihood (loglikelihood tasks).
    """

    modes: tuple[str, ...] = ("dense",)
    selects: tuple[float, ...] = (0.3,)
    sampler: Mapping[str, Any] = field(default_factory=dict)
    sparse: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    samples: int = 1
    seed: int = 0
    chat: bool | None = None
    limit: int | None = None
    mc_num: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "selects", tuple(float(s) for s in self.selects))
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise AdllmError(f"unknown mode(s) {', '.join(map(repr, bad)) or '(none given)'}; "
                             f"choose from {', '.join(MODES)}")
        if len(set(self.modes)) != len(self.modes):
            raise AdllmError(f"modes {list(self.modes)} repeat a mode; give each once")
        if any(m != "dense" for m in self.modes) and not self.selects:
            raise AdllmError("sparse modes need at least one select value")
        if any(not (math.isfinite(s) and 0.0 < s <= 1.0) for s in self.selects):
            raise AdllmError(f"select values {list(self.selects)} must each be in (0, 1]")
        for name in ("batch_size", "samples", "mc_num"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AdllmError(f"{name}={value!r} must be a positive integer")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise AdllmError(f"limit={self.limit!r} must be a positive integer")
        for key in ("select", "importance"):
            if key in self.sparse:
                raise AdllmError(f"sparse option {key!r} is set by the modes/selects, not here")

    def conditions(self) -> list[tuple[str, float]]:
        """(mode, select) in report order: dense (select 1) first, then mode-major."""
        out = [("dense", 1.0)] if "dense" in self.modes else []
        return out + [(m, s) for m in self.modes if m != "dense" for s in self.selects]


def has_chat_template(tokenizer: Any) -> bool:
    """True when ``tokenizer`` can render a chat prompt (the bundled byte tokenizer cannot)."""
    if tokenizer is None:
        return False
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}])
    except AdllmError:
        return False
    return True


def task_sampler(task: Task, given: Mapping[str, Any]) -> dict[str, Any]:
    """Sampler options: the task's defaults under the ``given`` ones. Defaults tied to the
    task's ``gen_length`` follow a given ``gen_length``: ``steps`` keeps its ratio to it, and a
    default ``block_length`` longer than it shrinks to it (``--gen-length 16`` alone must not
    run 256 steps, nor fail on GSM8K's blocks of 32)."""
    defaults = task.generation_defaults()
    merged = {**defaults, **given}
    gen, base = given.get("gen_length"), defaults.get("gen_length")
    if isinstance(gen, int) and isinstance(base, int) and gen != base:
        if "steps" not in given and isinstance(defaults.get("steps"), int):
            merged["steps"] = max(1, defaults["steps"] * gen // base)
        block = defaults.get("block_length")
        if "block_length" not in given and isinstance(block, int) and gen < block:
            merged["block_length"] = gen
    return merged


def stochastic(options: Mapping[str, Any]) -> bool:
    """Whether these sampler options draw random numbers (then items are generated one by one)."""
    return (float(options.get("temperature") or 0.0) > 0 or options.get("remasking") == "random"
            or options.get("alg") == "origin" or float(options.get("alg_temp") or 0.0) > 0)


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    settings: RunSettings | None = None,
    *,
    importance: Any = None,
    out: str | Path | None = None,
    ranks: Ranks | None = None,
    estimator: LoglikelihoodEstimator | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
    progress: bool = False,
) -> TaskReport:
    """Evaluate ``task`` under every condition of ``settings`` (see the module docstring).

    Args:
        model: the transformer (its device and dtype are used as they are).
        tokenizer: the model's tokenizer (tasks are text; None is an error).
        task: the task (:func:`~adaptive_dllm.evaluation.tasks.base.get_task`).
        settings: :class:`RunSettings` (default: dense only).
        importance: a :class:`~adaptive_dllm.importance.artifact.HeadImportance`; needed by the
            adaptive mode.
        out: JSONL results file, resumed when it exists (rank 0 writes it).
        ranks: torchrun ranks (:func:`~adaptive_dllm._distributed.init_ranks`); None = one.
        estimator: log-likelihood estimator for loglikelihood tasks; None =
            :func:`adaptive_dllm.evaluation.likelihood.estimate_loglikelihood`.
        on_records: called on every rank with the records of each finished round.
        progress: a progress bar on stderr (rank 0).

    Returns:
        A :class:`~adaptive_dllm.evaluation.report.TaskReport` over every item, on every rank.

    Raises:
        AdllmError: bad settings, no tokenizer, adaptive without importance, a results file of
            other settings, duplicate item ids, or a task/sampler error.
    """
    ctx = _context(model, tokenizer, task, settings or RunSettings(), importance, estimator)
    ranks = ranks or Ranks()
    s = ctx.settings
    items = task.items(limit=s.limit)
    _check_items(ctx, items)
    header = _header(ctx, model)
    done, writer = _shared_done(Path(out) if out is not None else None, header, ranks)
    conds = s.conditions()
    size = 1 if task.kind == "generate" and stochastic(ctx.sampler) else s.batch_size
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    units = [(b, c) for b in range(len(batches)) for c in conds
             if any((it.id, c[0], round(c[1], 9)) not in done for it in batches[b])]
    mine = shard(units, ranks)
    bar = _bar(len(units), progress and ranks.is_main)
    new: list[dict[str, Any]] = []
    try:
        for r in range(math.ceil(len(units) / ranks.world)):
            result: Any = []
            if r < len(mine):
                b, (mode, select) = mine[r]
                try:
                    result = [rec for rec in run_unit(ctx, batches[b], mode, select)
                              if record_key(rec) not in done]
                except AdllmError as err:
                    result = str(err)
            gathered = gather_objects(result, ranks)
            errors = [g for g in gathered if isinstance(g, str)]
            if errors:
                raise AdllmError(errors[0])
            round_records = [rec for g in gathered for rec in g]
            writer.write(round_records)
            new.extend(round_records)
            if on_records is not None:
                on_records(round_records)
            if bar is not None:
                bar.update(min(ranks.world, len(units) - r * ranks.world))
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return _report(task, model, items, conds, {**done, **{record_key(r): r for r in new}}, header)


def _context(model: nn.Module, tokenizer: Any, task: Task, s: RunSettings, importance: Any,
             estimator: LoglikelihoodEstimator | None) -> UnitContext:
    if task.kind not in ("generate", "loglikelihood"):
        raise AdllmError(f"task {task.name!r} has unknown kind {task.kind!r}")
    source = getattr(model, "source", None)
    if tokenizer is None:
        raise AdllmError(f"model {source!r} has no tokenizer; task {task.name!r} needs text "
                         "prompts: use a checkpoint with tokenizer.json")
    if "adaptive" in s.modes and importance is None:
        raise AdllmError("the adaptive mode needs head importance: pass --importance FILE "
                         "(from `adllm importance estimate`)")
    if importance is not None and "adaptive" not in s.modes:
        raise AdllmError("--importance is only used by the adaptive mode (add it to --modes)")
    sampler = task_sampler(task, s.sampler)
    if task.kind == "generate":
        from adaptive_dllm.generation.api import make_options

        make_options(model.config.family, **sampler)  # one-line error before any work
    device = next(model.parameters()).device
    block_size = s.sparse.get("block_size", SparseConfig.block_size)
    sparse = {"backend": measuring_backend(device.type, block_size), **s.sparse}
    if any(m != "dense" for m in s.modes):
        # Invalid sparse options or importance that does not fit the model: fail before any work.
        check = SparseConfig(select=s.selects[0], importance=importance, **sparse)
        if importance is not None:
            check.weights(model.config)
    if task.kind == "loglikelihood" and estimator is None:
        estimator = default_estimator()
    chat = has_chat_template(tokenizer) if s.chat is None else bool(s.chat)
    return UnitContext(model, tokenizer, task, s, sampler, sparse, chat, importance, estimator)


def _check_items(ctx: UnitContext, items: Sequence[TaskItem]) -> None:
    """Unique ids, and every prompt fits the model with its generation (before any work)."""
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise AdllmError(f"task {ctx.task.name!r} has duplicate item ids; ids must be unique")
    if ctx.task.kind == "generate":
        from adaptive_dllm.generation.api import make_options

        config = ctx.model.config
        check_context(ctx.task, items, ctx.tokenizer, max_len=config.max_seq_len, chat=ctx.chat,
                      gen_length=make_options(config.family, **ctx.sampler).gen_length)


def default_estimator() -> LoglikelihoodEstimator:
    """The package's Monte-Carlo masked log-likelihood estimator
    (:func:`adaptive_dllm.evaluation.loglik.estimate_loglikelihood`), with ``sparse=`` a
    :class:`SparseConfig` whose session is built per request for likelihood scoring (one plan
    per forward over all keys, as ``adllm eval fidelity`` scores NLL)."""
    from adaptive_dllm.evaluation.loglik import estimate_loglikelihood

    def estimate(model: nn.Module, prefix_ids: Sequence[int], continuation_ids: Sequence[int], *,
                 mc_num: int, batch_size: int, seed: int, sparse: SparseConfig | None) -> float:
        attn = None
        if sparse is not None:
            attn = replace(sparse, likelihood=True, region="joint").new_session(model.config, 1)
        return estimate_loglikelihood(model, prefix_ids, continuation_ids, mc_num=mc_num,
                                      batch_size=batch_size, seed=seed, attn=attn)

    return estimate


def _header(ctx: UnitContext, model: nn.Module) -> dict[str, Any]:
    s = ctx.settings
    param = next(model.parameters())
    imp = None
    if ctx.importance is not None:
        imp = hashlib.sha256(ctx.importance.scores.float().cpu().numpy().tobytes()).hexdigest()[:16]
    return {"task": ctx.task.name, "task_settings": ctx.task.settings(), "kind": ctx.task.kind,
            "model": record_path(getattr(model, "source", None)),
            "dtype": str(param.dtype).removeprefix("torch."),
            "modes": list(s.modes), "selects": list(s.selects), "sampler": ctx.sampler,
            "sparse": ctx.sparse if any(m != "dense" for m in s.modes) else None,
            "importance_sha256": imp, "chat": ctx.chat, "samples": s.samples, "seed": s.seed,
            "batch_size": s.batch_size, "mc_num": s.mc_num if ctx.task.kind == "loglikelihood" else None}


def _shared_done(out: Path | None, header: dict[str, Any],
                 ranks: Ranks) -> tuple[dict[Any, dict[str, Any]], ResultsWriter]:
    """Rank 0 opens the results file; every rank gets its finished records (or its error)."""
    payload: Any = None
    writer = None
    if ranks.is_main:
        try:
            done, writer = open_results(out, header)
            payload = done
        except AdllmError as err:
            payload = str(err)
    shared = gather_objects(payload, ranks)[0]
    if isinstance(shared, str):
        raise AdllmError(shared)
    return shared, writer if writer is not None else ResultsWriter(None)


def _report(task: Task, model: nn.Module, items: Sequence[TaskItem],
            conds: Sequence[tuple[str, float]], records: Mapping[Any, dict[str, Any]],
            header: dict[str, Any]) -> TaskReport:
    ordered = [records[(it.id, m, round(s, 9))] for it in items for m, s in conds
               if (it.id, m, round(s, 9)) in records]
    return TaskReport(task=task.name, model=record_path(getattr(model, "source", None)),
                      results=aggregate(ordered, conds), records=tuple(ordered), settings=header)


def _bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from adaptive_dllm._progress import progress_bar

    # A tqdm bar on a terminal, whole lines in a log (every ~10% or 30 s).
    return progress_bar(total, desc="eval", unit="batch")
