"""HeadIG: integrated gradients of the masked-reconstruction objective w.r.t. per-head output gates.

Shape legend: Ly layers, H query heads per layer, L sequence length, Vv mask variants of one
example, V vocabulary.

Every query head's attention output is multiplied by a gate alpha_d before the output projection
(``Transformer(head_gates=...)``; the model itself is frozen). For one calibration example the
objective is

    J(alpha) = -(1 / Vv) * sum_v loss_v(alpha),

where variant v masks the completion span at ratio r with Monte-Carlo mask s (Vv = |ratios| x S),
and loss_v is the cross-entropy at the masked positions (``mean_masked``: averaged over them;
``sum``: summed), computed on logits aligned with :meth:`FamilySpec.align_logits` (Dream's
one-position shift). J = -loss, so a head whose presence lowers the loss gets a positive score
("higher is more important"; upstream integrated the loss and had to negate, §4 item 2).

Integration paths from the baseline alpha0 (``baseline``: 0 or a scalar) to all-ones:

- **DP** (diagonal): alpha_d(t) = alpha0 + (1 - alpha0) t for every head.
- **STP** (stochastic threshold): each head draws u_d ~ U[0, 1) and
  alpha_d(t) = alpha0 + (1 - alpha0) clip((t - u_d) / (1 - u_d), 0, 1); the result is averaged over
  P such paths. With u = 0 STP *is* DP.

Discretisation with K steps, t_k = k / K (``rule="midpoint"``, the default):

    IG_d = sum_{k=1..K} dJ/dalpha_d(alpha(t_{k-1/2})) * (alpha_d(t_k) - alpha_d(t_{k-1})),

gradient at the interval midpoint, increment over the whole interval (error O(1/K^2) on a smooth
straight path; ``rule="right"`` evaluates at t_k like upstream, error O(1/K)). Completeness:
sum_d IG_d ~= J(1) - J(alpha0); both ends are evaluated per example and the gap is reported.

Per example the path average is post-processed (``signed`` default, ``abs``, ``relu``); the score
is the mean over examples. Heads outside the layer range keep alpha = 1 on every path and are not
attributed (their score is NaN).

Cost per example: |ratios| x S x K x P sequence forward+backward passes (batched
``mask_batch_size`` variants at a time), plus 2 x |ratios| x S forward passes for the completeness
check. Masks and thresholds are derived from (seed, example index, ratio index, sample / path), so
results do not depend on batching or on resuming.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from adaptive_dllm._distributed import Ranks, shard
from adaptive_dllm._progress import progress_bar
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.importance.calibration import CalibrationSet, Example
from adaptive_dllm.importance.gate_paths import (  # noqa: F401  (re-exported)
    GradFn,
    LossMode,
    MaskedObjective,
    PostProcess,
    Rule,
    derive_seed,
    gate_path,
    integrated_gradients,
    mask_variants,
    postprocess,
    stp_thresholds,
)
from adaptive_dllm.importance.headig_state import (
    build_artifact,
    fingerprint,
    gather_examples,
    load_state,
    rel_gap,
    save_state,
)
from adaptive_dllm.models.families import get_family

log = logging.getLogger(__name__)

PathMode = Literal["stp", "dp"]


@dataclass(frozen=True)
class HeadIGSettings:
    """Everything that defines a HeadIG estimate (stored in the artifact's metadata).

    Attributes:
        mask_ratios: masking ratios of the completion span.
        mask_samples: Monte-Carlo masks S per ratio.
        steps: integration steps K.
        path: ``stp`` (stochastic threshold) or ``dp`` (diagonal).
        path_samples: STP paths P per example (DP always uses one path).
        baseline: alpha0, the gate value the path starts from (0 = "zero" baseline).
        loss: ``mean_masked`` or ``sum`` over the masked positions of a variant.
        postprocess: ``signed`` | ``abs`` | ``relu``, applied per example.
        rule: ``midpoint`` or ``right`` Riemann sum.
        layers: inclusive (first, last) layer range to attribute; None = all. Negative indices
            count from the end.
        mask_batch_size: mask variants per forward pass (memory only; results are unchanged).
        seed: seed of the masks and the STP thresholds.
    """

    mask_ratios: tuple[float, ...] = (0.15, 0.3, 0.5, 0.7, 0.9)
    mask_samples: int = 2
    steps: int = 8
    path: PathMode = "stp"
    path_samples: int = 4
    baseline: float = 0.0
    loss: LossMode = "mean_masked"
    postprocess: PostProcess = "signed"
    rule: Rule = "midpoint"
    layers: tuple[int, int] | None = None
    mask_batch_size: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_ratios", tuple(float(r) for r in self.mask_ratios))
        if not self.mask_ratios or not all(0.0 < r <= 1.0 for r in self.mask_ratios):
            raise AdllmError(f"mask ratios {self.mask_ratios} must be non-empty and each in (0, 1]")
        for name in ("mask_samples", "steps", "path_samples", "mask_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AdllmError(f"HeadIG {name}={value!r} must be a positive integer")
        choices = {"path": ("stp", "dp"), "loss": ("mean_masked", "sum"),
                   "postprocess": ("signed", "abs", "relu"), "rule": ("midpoint", "right")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise AdllmError(f"HeadIG {name}={getattr(self, name)!r} must be one of {', '.join(allowed)}")
        if not 0.0 <= self.baseline < 1.0:
            raise AdllmError(f"HeadIG baseline {self.baseline} must be in [0, 1)")
        if self.layers is not None:
            object.__setattr__(self, "layers", (int(self.layers[0]), int(self.layers[1])))

    @property
    def paths(self) -> int:
        """Integration paths per example (P; 1 for DP)."""
        return self.path_samples if self.path == "stp" else 1

    @property
    def variants(self) -> int:
        """Mask variants per example (|ratios| x S)."""
        return len(self.mask_ratios) * self.mask_samples

    @property
    def passes_per_example(self) -> int:
        """Sequence forward+backward passes per example: |ratios| x S x K x P."""
        return self.variants * self.steps * self.paths

    def layer_range(self, n_layers: int) -> range:
        """The attributed layers as a range (validated against the model depth)."""
        if self.layers is None:
            return range(n_layers)
        first, last = (i + n_layers if i < 0 else i for i in self.layers)
        if not 0 <= first <= last < n_layers:
            raise AdllmError(
                f"layer range {self.layers} is not inside the model's {n_layers} layers (0..{n_layers - 1})"
            )
        return range(first, last + 1)


def describe_cost(settings: HeadIGSettings, n_examples: int) -> str:
    """One line stating the forward+backward count (printed before a run starts)."""
    s = settings
    per = s.passes_per_example
    calls = math.ceil(s.variants / s.mask_batch_size) * s.steps * s.paths
    return (
        f"HeadIG cost: |ratios| {len(s.mask_ratios)} x S {s.mask_samples} x K {s.steps} x "
        f"P {s.paths} = {per} forward+backward passes per example ({calls} batched calls of up to "
        f"{s.mask_batch_size}) + {2 * s.variants} forward passes for the completeness check; "
        f"{n_examples} examples -> {per * n_examples} forward+backward passes"
    )


class _Frozen:
    """Freeze parameters and set activation checkpointing for the duration of a run."""

    def __init__(self, model: nn.Module, checkpointing: bool) -> None:
        self.model, self.checkpointing = model, checkpointing

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.model.parameters()]
        self.was_training = self.model.training
        self.old_ckpt = getattr(self.model, "gradient_checkpointing", False)
        self.model.requires_grad_(False).eval()
        self.model.gradient_checkpointing = self.checkpointing

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.model.parameters(), self.flags, strict=True):
            p.requires_grad_(flag)
        self.model.train(self.was_training)
        self.model.gradient_checkpointing = self.old_ckpt


def headig(
    model: nn.Module,
    examples: CalibrationSet | Sequence[Example],
    settings: HeadIGSettings | None = None,
    *,
    checkpointing: bool | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    ranks: Ranks | None = None,
    per_layer: bool = False,
) -> HeadImportance:
    """Estimate head importance with HeadIG.

    Args:
        model: a :class:`~adaptive_dllm.models.transformer.Transformer` (frozen during the run).
        examples: calibration examples (a :class:`CalibrationSet` also records its provenance).
        settings: :class:`HeadIGSettings` (default: the upstream runner's recipe, STP).
        checkpointing: activation checkpointing per block; None = on for models above 1B
            parameters (7-8B models do not fit otherwise).
        resume: a file where partial results are saved after every example; a run restarted
            with the same file, settings, data and model skips the examples already done.
            Under torchrun every rank keeps its own file, ``<resume>.rank<r>of<world>``.
        progress: show a progress bar (one tick per gradient evaluation).
        ranks: torchrun ranks (:func:`~adaptive_dllm._distributed.init_ranks`): every rank
            attributes every ``world``-th example and the per-example attributions are gathered
            in example order, so every rank returns exactly the one-process result.
        per_layer: one run per attributed layer, moving only that layer's gates along the path
            (the other layers held at 1), so a head is scored in the context of the full model
            rather than of a jointly shrunk one. Costs one run per layer; ``resume`` then names
            one file per layer (:func:`layer_resume_path`) and the metadata keeps every layer's
            completeness diagnostics under ``per_layer``.

    Returns:
        A :class:`~adaptive_dllm.importance.artifact.HeadImportance` over query heads, signed
        (by default) with "higher is more important", with the settings, data description,
        completeness diagnostics and cost in its metadata.

    Raises:
        AdllmError: bad settings, layer range, empty data, or a resume file for another run.
    """
    settings = settings or HeadIGSettings()
    if per_layer:
        return _headig_per_layer(model, examples, settings, resume=resume,
                                 checkpointing=checkpointing, progress=progress, ranks=ranks)
    ranks = ranks or Ranks()
    exs = list(examples)
    if not exs:
        raise AdllmError("HeadIG needs at least one calibration example")
    cfg = model.config
    shape = (cfg.n_layers, cfg.n_heads)
    layers = settings.layer_range(cfg.n_layers)
    alpha0 = torch.ones(shape, dtype=torch.float64)
    alpha0[layers.start : layers.stop] = settings.baseline
    if checkpointing is None:
        checkpointing = sum(p.numel() for p in model.parameters()) > 1e9
    mine = shard(range(len(exs)), ranks)  # this rank's example indices
    resume_path = Path(resume) if resume is not None else None
    if resume_path is not None and ranks.distributed:
        resume_path = resume_path.with_name(f"{resume_path.name}.rank{ranks.rank}of{ranks.world}")
    state = load_state(resume_path, fingerprint(model, [exs[i] for i in mine], settings))
    log.info(describe_cost(settings, len(exs)))
    ticks_per_example = settings.paths * settings.steps
    bar = progress_bar(len(mine) * ticks_per_example, desc="HeadIG", unit="step",
                       enabled=progress, initial=len(state["ig"]) * ticks_per_example)
    started = time.perf_counter()
    with _Frozen(model, checkpointing), bar:
        _attribute_shard(model, [(i, exs[i]) for i in mine], settings, alpha0, state, bar,
                         resume_path)
    results = gather_examples(mine, state, ranks)
    return build_artifact(model, examples, settings, results, layers, checkpointing,
                          time.perf_counter() - started)


def _attribute_shard(model: nn.Module, todo: Sequence[tuple[int, Example]],
                     settings: HeadIGSettings, alpha0: Tensor, state: dict[str, Any], bar: Any,
                     resume_path: Path | None) -> None:
    """Attribute this rank's ``(index, example)`` pairs not yet in ``state`` (resumed ones are
    skipped), appending to ``state`` and saving it after every example."""
    started = time.perf_counter()
    first = len(state["ig"])
    for pos in range(first, len(todo)):
        index, example = todo[pos]
        ig, j_full, j_base = _attribute_example(model, example, index, settings, alpha0,
                                                bar.update)
        state["ig"].append(ig.float())
        state["j_full"].append(j_full)
        state["j_base"].append(j_base)
        bar.set_postfix_str(f"gap={rel_gap(ig.sum().item(), j_full - j_base):.1%}")
        if pos == first:  # the cost line came first; now a measured time estimate
            each, left = time.perf_counter() - started, len(todo) - pos - 1
            bar.note(f"HeadIG: example {index + 1} took {each:.1f} s; about "
                     f"{each * left:.0f} s for the remaining {left}")
        if resume_path is not None:
            save_state(resume_path, state)


def _headig_per_layer(model: nn.Module, examples: CalibrationSet | Sequence[Example],
                      settings: HeadIGSettings, *, resume: str | Path | None,
                      checkpointing: bool | None, progress: bool, ranks: Ranks | None
                      ) -> HeadImportance:
    """``headig(per_layer=True)``: one single-layer run per layer, scores and diagnostics joined."""
    layers = settings.layer_range(model.config.n_layers)
    scores = torch.full((model.config.n_layers, model.config.n_heads), float("nan"))
    per_layer, last = [], None
    for layer in layers:
        part_resume = None if resume is None else layer_resume_path(Path(resume), layer)
        last = headig(model, examples, replace(settings, layers=(layer, layer)),
                      checkpointing=checkpointing, resume=part_resume, progress=progress,
                      ranks=ranks)
        scores[layer] = last.scores[layer]
        per_layer.append({"layer": layer, "completeness": last.metadata["completeness"],
                          "elapsed_s": last.metadata["elapsed_s"]})
    assert last is not None  # layer_range is never empty
    metadata = {**last.metadata, "settings": {**asdict(settings), "per_layer": True},
                "layers_attributed": [layers.start, layers.stop - 1], "per_layer": per_layer,
                "elapsed_s": round(sum(p["elapsed_s"] for p in per_layer), 2)}
    metadata.pop("completeness")
    return HeadImportance(scores=scores, head_kind="query", metadata=metadata)


def layer_resume_path(resume: Path, layer: int) -> Path:
    """The resume file of one layer of a per-layer run: ``NAME.layerI.SUFFIX``."""
    return resume.with_name(f"{resume.stem}.layer{layer}{resume.suffix}")


def _attribute_example(model: nn.Module, example: Example, index: int, settings: HeadIGSettings,
                       alpha0: Tensor, tick: Callable[[], None] | None
                       ) -> tuple[Tensor, float, float]:
    """(Ly, H) float64 path-averaged IG of one example, J(1) and J(alpha0)."""
    cfg = model.config
    inputs, masked = mask_variants(example, settings, index, mask_id=cfg.mask_id,
                                   logit_shift=get_family(cfg.family).logit_shift)
    objective = MaskedObjective(model, example.ids, inputs, masked, loss=settings.loss,
                                batch_size=settings.mask_batch_size)
    ig = torch.zeros(alpha0.shape, dtype=torch.float64)
    for p in range(settings.paths):
        u = (stp_thresholds(tuple(alpha0.shape), seed=settings.seed, index=index, path=p)
             if settings.path == "stp" else None)
        ig += integrated_gradients(objective.value_and_grad, alpha0, steps=settings.steps,
                                   thresholds=u, rule=settings.rule,
                                   on_step=tick)
    ig /= settings.paths
    return ig, objective.value(torch.ones(alpha0.shape)), objective.value(alpha0)
