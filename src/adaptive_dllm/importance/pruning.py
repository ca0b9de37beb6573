"""Head-pruning tests: zero the most / least / random k heads and measure what breaks.

Shape legend: Ly layers, H query heads per layer.

If an importance estimate is right, removing its *most* important heads hurts more than removing
its *least* important ones, and more than removing random heads. A pruned head's gate is 0
(``Transformer(head_gates=...)``): its attention output is removed before the output projection,
exactly the intervention HeadIG attributes.

Selection rules (:func:`prune_gates`):

- Candidates are the query heads in the layer range whose score is finite (NaN = not estimated).
- ``k`` heads, or ``fraction`` of the candidates (``round(fraction * n)``), globally or in every
  layer (``per_layer``: k per layer, or ``round(fraction * candidates of the layer)``).
- ``most``: highest scores first; ``least``: lowest first; ties broken by (layer, head) index.
  ``random``: a permutation from a CPU generator seeded with ``seed``.
- ``keep_one_per_layer`` (default on): a global selection skips a head that would leave its layer
  with no head at all and takes the next one, so exactly k heads are still pruned; a per-layer
  selection refuses k >= H. (Removing a whole layer's attention tests something else.)
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance

Which = Literal["most", "least", "random"]
Scope = Literal["global", "per_layer"]
WHICH: tuple[str, ...] = ("most", "least", "random")
SCOPES: tuple[str, ...] = ("global", "per_layer")

#: evaluate(gates) -> {metric name: value}; gates (Ly, H) float32, or None for the unpruned model.
Evaluator = Callable[[Tensor | None], dict[str, float]]


def _order(scores: Tensor, candidates: Tensor, which: Which, gen: torch.Generator) -> list[int]:
    """Flat indices of the candidates in pruning order."""
    idx = candidates.flatten().nonzero()[:, 0]
    if which == "random":
        perm = torch.randperm(idx.numel(), generator=gen)
        return idx[perm].tolist()
    values = scores.flatten()[idx].double()
    order = values.argsort(descending=(which == "most"), stable=True)
    return idx[order].tolist()


def prune_gates(
    scores: HeadImportance | Tensor,
    which: Which,
    *,
    k: int | None = None,
    fraction: float | None = None,
    scope: Scope = "global",
    seed: int = 0,
    layers: tuple[int, int] | None = None,
    keep_one_per_layer: bool = True,
) -> Tensor:
    """Gates with the selected heads set to 0 (see the module docstring for the rules).

    Args:
        scores: query-head importance (Ly, H), higher = more important.
        which: ``most`` | ``least`` | ``random``.
        k: number of heads (global) or heads per layer (``per_layer``); give k or fraction.
        fraction: fraction of the candidate heads instead of k.
        scope: ``global`` or ``per_layer``.
        seed: seed of ``random``.
        layers: inclusive (first, last) layer range of the candidates; None = all.
        keep_one_per_layer: never prune every head of a layer.

    Returns:
        (Ly, H) float32 gates, 0 at pruned heads and 1 elsewhere.

    Raises:
        AdllmError: per-KV-head scores, bad k / fraction / scope / range.
    """
    if isinstance(scores, HeadImportance):
        if scores.head_kind != "query":
            raise AdllmError("pruning needs per-query-head importance (head_kind 'query'); this file "
                             "has per-KV-head scores")
        scores = scores.scores
    if which not in WHICH:
        raise AdllmError(f"which={which!r} must be one of {', '.join(WHICH)}")
    if scope not in SCOPES:
        raise AdllmError(f"scope={scope!r} must be one of {', '.join(SCOPES)}")
    if (k is None) == (fraction is None):
        raise AdllmError("give exactly one of k and fraction")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise AdllmError(f"fraction {fraction} must be in [0, 1]")
    if k is not None and k < 0:
        raise AdllmError(f"k={k} must be >= 0")
    n_layers, n_heads = scores.shape
    candidates = torch.isfinite(scores)
    if layers is not None:
        first, last = (i + n_layers if i < 0 else i for i in layers)
        if not 0 <= first <= last < n_layers:
            raise AdllmError(f"layer range {layers} is not inside 0..{n_layers - 1}")
        candidates[:first] = False
        candidates[last + 1 :] = False
    gen = torch.Generator().manual_seed(seed)  # random: one stream, layer after layer
    if scope == "per_layer":
        return _per_layer_gates(scores, candidates, which, gen, k=k, fraction=fraction,
                                keep_one_per_layer=keep_one_per_layer)
    return _global_gates(scores, candidates, which, gen, k=k, fraction=fraction,
                         keep_one_per_layer=keep_one_per_layer)


def _per_layer_gates(scores: Tensor, candidates: Tensor, which: Which, gen: torch.Generator, *,
                     k: int | None, fraction: float | None, keep_one_per_layer: bool) -> Tensor:
    """k (or ``fraction`` of the candidates) heads pruned in every layer."""
    n_layers, n_heads = scores.shape
    gates = torch.ones(n_layers, n_heads)
    for layer in range(n_layers):
        cand = torch.zeros_like(candidates)
        cand[layer] = candidates[layer]
        n = int(cand.sum())
        if n == 0:
            continue
        count = k if k is not None else round(fraction * n)
        if count > n or (keep_one_per_layer and count >= n_heads):
            raise AdllmError(
                f"cannot prune {count} heads in layer {layer}: it has {n} candidate(s) of "
                f"{n_heads} heads{' and one must stay' if keep_one_per_layer else ''}"
            )
        for flat in _order(scores, cand, which, gen)[:count]:
            gates.view(-1)[flat] = 0.0
    return gates


def _global_gates(scores: Tensor, candidates: Tensor, which: Which, gen: torch.Generator, *,
                  k: int | None, fraction: float | None, keep_one_per_layer: bool) -> Tensor:
    """k (or ``fraction`` of the candidates) heads pruned over all layers, in ranking order."""
    n_layers, n_heads = scores.shape
    gates = torch.ones(n_layers, n_heads)
    n = int(candidates.sum())
    count = k if k is not None else round(fraction * n)
    if count > n:
        raise AdllmError(f"cannot prune {count} heads: only {n} candidate heads")
    alive = torch.full((n_layers,), n_heads)
    pruned = 0
    for flat in _order(scores, candidates, which, gen):
        if pruned == count:
            break
        layer = flat // n_heads
        if keep_one_per_layer and alive[layer] == 1:
            continue
        gates.view(-1)[flat] = 0.0
        alive[layer] -= 1
        pruned += 1
    if pruned < count:
        raise AdllmError(f"cannot prune {count} heads while keeping one head per layer")
    return gates


class GatedModel(nn.Module):
    """``model`` with fixed head gates: ``GatedModel(m, g)(ids, ...) == m(ids, ..., head_gates=g)``.

    Lets any evaluator that takes a model (NLL, fidelity, generation) run a pruned model; attention
    hooks (sparse sessions) still pass through.
    """

    def __init__(self, model: nn.Module, gates: Tensor) -> None:
        super().__init__()
        cfg = model.config
        if gates.shape != (cfg.n_layers, cfg.n_heads):
            raise AdllmError(f"gates of shape {tuple(gates.shape)} do not fit the model "
                             f"({cfg.n_layers}, {cfg.n_heads})")
        self.model = model
        self.register_buffer("gates", gates.to(next(model.parameters()).device), persistent=False)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def source(self) -> Any:
        return getattr(self.model, "source", None)

    def forward(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        gates = self.gates
        if kwargs.get("head_gates") is not None:
            gates = gates * kwargs["head_gates"]
        kwargs["head_gates"] = gates
        return self.model(input_ids, **kwargs)


def gated_evaluator(model: nn.Module, metric: Callable[[nn.Module], dict[str, float]]
                    ) -> Evaluator:
    """An evaluator that scores ``model`` with each pruning's gates applied (:class:`GatedModel`)
    and the unpruned model for the baseline (gates None).

    ``metric`` (model -> {name: value}) comes from the caller: ``adllm prune`` passes the
    held-out masked-token NLL of :mod:`adaptive_dllm.evaluation.likelihood`, which sits above
    this package, so pruning itself needs no evaluation code.
    """
    def evaluate(gates: Tensor | None) -> dict[str, float]:
        return metric(model if gates is None else GatedModel(model, gates))

    return evaluate


def command_evaluator(command: str, *, timeout: float | None = None) -> Evaluator:
    """Evaluate with an external command (e.g. a task harness).

    The gates are written to a JSON file ``{"gates": [[...]], "pruned": [[layer, head], ...]}``
    whose path replaces ``{gates}`` in ``command`` and is also in the environment variable
    ``ADLLM_HEAD_GATES``. The command's last stdout line must be a number (the metric ``task``)
    or a JSON object of numbers.
    """
    def evaluate(gates: Tensor | None) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "gates.json")
            payload = {"gates": None if gates is None else gates.tolist(),
                       "pruned": [] if gates is None else (gates == 0).nonzero().tolist()}
            with open(path, "w") as f:
                json.dump(payload, f)
            cmd = command.replace("{gates}", shlex.quote(path))
            try:
                done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout,
                                      env={**os.environ, "ADLLM_HEAD_GATES": path})
            except subprocess.TimeoutExpired:
                raise AdllmError(f"task command timed out after {timeout} s: {command}") from None
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-1:])
            raise AdllmError(f"task command failed with status {done.returncode}: {tail}")
        lines = done.stdout.strip().splitlines()
        last = lines[-1] if lines else ""
        try:
            value = json.loads(last)
        except json.JSONDecodeError:
            raise AdllmError(f"task command's last output line {last!r} is not a number or JSON object") \
                from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {"task": value}
        if isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in value.values()):
            metrics = {str(key): float(v) for key, v in value.items()}
            if not all(math.isfinite(v) for v in metrics.values()):  # NaN, Infinity, 1e999
                raise AdllmError(f"task command's last output line {last!r} holds a non-finite "
                                 "number; print finite metrics")
            return metrics
        raise AdllmError(f"task command's last output line {last!r} is not a number or JSON object")

    return evaluate


@dataclass
class PruneRun:
    """One pruned configuration and its metrics."""

    which: str
    seed: int | None
    n_pruned: int
    pruned: list[list[int]]
    metrics: dict[str, float]


@dataclass
class PruningReport:
    """Baseline, most, least and random (several seeds) prunings with their metrics."""

    settings: dict[str, Any]
    baseline: dict[str, float]
    runs: list[PruneRun] = field(default_factory=list)

    def get(self, which: str) -> list[PruneRun]:
        return [r for r in self.runs if r.which == which]

    def summary(self) -> dict[str, dict[str, float]]:
        """{metric: {baseline, most, least, random_mean, random_std}} (random over its seeds)."""
        out: dict[str, dict[str, float]] = {}
        for metric, base in self.baseline.items():
            row = {"baseline": base}
            for which in ("most", "least"):
                runs = self.get(which)
                if runs:
                    row[which] = runs[0].metrics[metric]
            rand = [r.metrics[metric] for r in self.get("random")]
            if rand:
                row["random_mean"] = statistics.fmean(rand)
                row["random_std"] = statistics.stdev(rand) if len(rand) > 1 else math.nan
            out[metric] = row
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "baseline": self.baseline, "summary": self.summary(),
                "runs": [asdict(r) for r in self.runs]}


def pruning_test(
    importance: HeadImportance,
    evaluate: Evaluator,
    *,
    k: int | None = None,
    fraction: float | None = None,
    scope: Scope = "global",
    which: Sequence[Which] = ("most", "least", "random"),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    layers: tuple[int, int] | None = None,
    keep_one_per_layer: bool = True,
    on_run: Callable[[PruneRun], None] | None = None,
) -> PruningReport:
    """Evaluate the unpruned model and each pruning (random once per seed).

    Args:
        importance: per-query-head scores.
        evaluate: gates -> metrics (:func:`gated_evaluator`, :func:`command_evaluator`, or any
            callable of that shape, e.g. fidelity metrics).
        k, fraction, scope, layers, keep_one_per_layer: see :func:`prune_gates`.
        which: the selections to run.
        seeds: seeds of the random selection.
        on_run: called after every evaluation (progress reports).

    Returns:
        A :class:`PruningReport`.
    """
    settings = {"k": k, "fraction": fraction, "scope": scope, "which": list(which),
                "seeds": list(seeds), "layers": None if layers is None else list(layers),
                "keep_one_per_layer": keep_one_per_layer,
                "importance": {key: importance.metadata.get(key) for key in ("estimator", "seed", "data")}}
    report = PruningReport(settings=settings, baseline=evaluate(None))
    for w in which:
        for seed in (seeds if w == "random" else [None]):
            gates = prune_gates(importance, w, k=k, fraction=fraction, scope=scope,
                                seed=seed or 0, layers=layers, keep_one_per_layer=keep_one_per_layer)
            run = PruneRun(which=w, seed=seed, n_pruned=int((gates == 0).sum()),
                           pruned=(gates == 0).nonzero().tolist(), metrics=evaluate(gates))
            report.runs.append(run)
            if on_run is not None:
                on_run(run)
    return report
