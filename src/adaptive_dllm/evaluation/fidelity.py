"""Fidelity of block-sparse attention to dense attention: likelihood and generation, per select.

Shape legend: P passages, K prompts, L passage length, Lp prompt length, G generated tokens,
V vocabulary.

For every mode (``dense``, ``uniform``, ``adaptive``) and target ``select`` the same inputs are
evaluated with dense attention and with block-sparse attention
(``SparseConfig(select, skip, block_size, importance)``):

* **Likelihood.** :func:`~adaptive_dllm.evaluation.likelihood.masked_nll` on P held-out passages at
  each mask ratio, with identical seeded masks in every row (so differences are paired). Sparse rows
  run in likelihood mode: every forward builds its own plan from its own q/k, budgeted jointly over
  all key blocks (there is no prompt/generation split). ``delta`` = sparse - dense bits.
* **Generation.** K prompts (the first Lp tokens of K held-out passages, batched) generate G tokens
  with the family's sampler, greedily (temperature 0), once with dense attention and once with the
  SparseD schedule (dense for the first ``skip`` of the steps, then the plan). Then

  - ``token_agreement`` = fraction of the K x G generated positions whose token equals the dense
    run's;
  - ``kl_final`` = mean over the K x G generated positions of KL(dense || sparse) between the
    softmaxes of the two runs' **final-step logits**: the logits of each run's last denoising step
    (its last model call), each computed with that run's own attention (dense, or the plan) on that
    run's own sequence;
  - ``kl_commit`` = the same mean, but each position's logits are those of the step that committed
    it (the last step at which its input was still the mask token): the distribution the token was
    decoded from.

  KL is in nats, computed in float64 after the family's logit alignment.
* **Keep ratio.** ``keep_nll`` / ``keep_gen`` are the sessions' ``realized_keep_ratio``: kept
  key blocks over all blocks of every plan that ran (1.0 for dense runs, including select = 1,
  which runs the dense path exactly).

Sparse attention is forced to run (``gather`` on the CPU, ``flex`` on CUDA) instead of
``backend="auto"``, whose cost model picks dense attention on the CPU and for short sequences: the
numbers measure sparsity, not the kernel choice.

Adaptive importance comes from a file, or is estimated here with an attention statistic
(:func:`~adaptive_dllm.importance.estimators.estimate_importance`, default ``entropy``, the simplest)
on calibration passages that are never evaluation passages: evaluation passages and prompts are
drawn from the even-numbered passages of the text, calibration passages from the odd-numbered ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

import torch
from torch import nn

from adaptive_dllm._distributed import Ranks, gather_objects, shard
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.fidelity_generation import (  # noqa: F401  (kl_divergence re-exported)
    Generation,
    compare,
    generate_recorded,
    keep_ratio,
    kl_divergence,
    progress_bar,
    sampler_options,
    set_label,
    summarize_stats,
    tick,
)
from adaptive_dllm.evaluation.fidelity_report import (  # noqa: F401  (re-exported)
    format_markdown,
    format_table,
    plot_fidelity,
    table_rows,
)
from adaptive_dllm.evaluation.likelihood import masked_nll
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.sparsity.config import SparseConfig, measuring_backend

Mode = Literal["dense", "uniform", "adaptive"]
MODES: tuple[str, ...] = get_args(Mode)
SparseBackend = Literal["gather", "reference", "flex"]
STATISTIC_METHODS: tuple[str, ...] = ("entropy", "effective", "topk", "coverage", "deficit")


@dataclass(frozen=True)
class FidelitySettings:
    """What :func:`evaluate_fidelity` measures (defaults: the bundled model's documented run).

    Attributes:
        selects: Target keep ratios in (0, 1]; 1 is the exactness check (runs dense).
        modes: Modes to evaluate; ``dense`` (the reference) always runs.
        block_size: Sparse block size in tokens.
        skip: Dense fraction of the denoising steps (generation only).
        region: Generation budgets: ``separate`` prompt / generation keys, or ``joint``.
        mask_ratios: Mask ratios of the likelihood part.
        backend: Sparse kernel; None = ``gather`` on the CPU, ``flex`` on CUDA.
        passages: Evaluation passages P of the likelihood part (0 skips it).
        prompts: Prompts K of the generation part (0 skips it).
        prompt_length: Lp, tokens of each prompt (a passage prefix).
        gen_length: G, generated tokens.
        steps: Denoising steps of a generation; None = ``gen_length`` (one token per step, the
            LLaDA default: with a quarter of that, the bundled model's greedy output collapses
            into runs of spaces, and agreement would mostly count spaces).
        block_length: Semi-autoregressive block length of the sampler (LLaDA).
        calibration: Calibration passages for the estimated importance.
        importance_method: Attention statistic used when no importance is given.
        seed: Mask seed (likelihood), sampler seed and importance seed.
        batch_size: Passages per likelihood forward.
    """

    selects: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    modes: tuple[str, ...] = MODES
    block_size: int = 32
    skip: float = 0.2
    region: Literal["separate", "joint"] = "separate"
    mask_ratios: tuple[float, ...] = (0.15, 0.5, 0.9)
    backend: SparseBackend | None = None
    passages: int = 8
    prompts: int = 4
    prompt_length: int = 512
    gen_length: int = 128
    steps: int | None = None
    block_length: int = 32
    calibration: int = 4
    importance_method: str = "entropy"
    seed: int = 0
    batch_size: int = 4

    def __post_init__(self) -> None:
        for name in ("selects", "modes", "mask_ratios"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.steps is None and isinstance(self.gen_length, int):
            object.__setattr__(self, "steps", self.gen_length)
        if not self.selects or any(not _real(s) or not 0.0 < s <= 1.0 for s in self.selects):
            raise AdllmError(f"select values {list(self.selects)} must each be in (0, 1]")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise AdllmError(f"unknown mode(s) {', '.join(map(repr, bad)) or '(none given)'}; "
                             f"choose from {', '.join(MODES)}")
        if not self.mask_ratios or any(not _real(r) or not 0.0 < r <= 1.0 for r in self.mask_ratios):
            raise AdllmError(f"mask ratios {list(self.mask_ratios)} must each be in (0, 1]")
        if self.backend is not None and self.backend not in get_args(SparseBackend):
            raise AdllmError(f"sparse backend {self.backend!r} must be one of "
                             f"{', '.join(get_args(SparseBackend))}")
        if self.importance_method not in STATISTIC_METHODS:
            raise AdllmError(f"importance method {self.importance_method!r} must be one of "
                             f"{', '.join(STATISTIC_METHODS)} (others: adllm importance estimate)")
        for name in ("passages", "prompts", "calibration"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise AdllmError(f"{name}={getattr(self, name)!r} must be a non-negative integer")
        if self.passages == 0 and self.prompts == 0:
            raise AdllmError("nothing to evaluate: both passages and prompts are 0")
        for name in ("prompt_length", "gen_length", "steps", "block_length", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise AdllmError(f"{name}={getattr(self, name)!r} must be a positive integer")
        # Validates select-independent sparse settings once, with the user's values in the message.
        SparseConfig(select=0.5, skip=self.skip, block_size=self.block_size, region=self.region,
                     backend=self.backend or "gather")

    def resolved_backend(self, device: torch.device) -> str:
        """The sparse kernel that runs on ``device``."""
        return self.backend or measuring_backend(device.type, self.block_size)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class FidelityRow:
    """One (mode, select) row; None where a part was not run. See the module docstring."""

    mode: str
    select: float
    nll: list[dict[str, float]] | None = None  # per ratio: mask_ratio, bits, stderr, delta
    keep_nll: float | None = None
    token_agreement: float | None = None
    kl_final: float | None = None
    kl_commit: float | None = None
    keep_gen: float | None = None
    sparse_stats: dict[str, Any] = field(default_factory=dict)  # {"nll": ..., "gen": ...}


@dataclass
class FidelityReport:
    """Rows plus what produced them (JSON-ready via :meth:`to_dict`)."""

    rows: list[FidelityRow]
    settings: FidelitySettings
    backend: str
    backend_note: str
    importance: dict[str, Any] | None
    passages: dict[str, list[int]]
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        settings = self.settings.to_dict()
        if self.importance is not None and self.importance.get("source") == "file":
            settings["importance_method"] = None  # a given file, not the statistic, was used
        return {"settings": settings, "backend": self.backend,
                "backend_note": self.backend_note, "importance": self.importance,
                "passages": self.passages, "elapsed_s": round(self.elapsed_s, 1),
                "rows": [asdict(r) for r in self.rows]}


def split_passages_for_fidelity(n_total: int, settings: FidelitySettings, *,
                                need_calibration: bool) -> dict[str, list[int]]:
    """Indices of evaluation passages, prompts (even indices) and calibration passages (odd).

    Each set is spread evenly over its half of the text, so a text made of several works
    contributes from each. Evaluation and calibration never share a passage.

    Raises:
        AdllmError: the text has too few passages for the requested counts.
    """
    evens, odds = list(range(0, n_total, 2)), list(range(1, n_total, 2))
    need = max(settings.passages, settings.prompts)
    if need > len(evens):
        raise AdllmError(f"the text has {n_total} passages, so {len(evens)} can be evaluation "
                         f"passages (even indices); asked for {need}: lower --passages/--prompts")
    cal = settings.calibration if need_calibration else 0
    if need_calibration and not 1 <= cal <= len(odds):
        raise AdllmError(
            f"adaptive mode without --importance estimates importance on {cal} calibration "
            f"passage(s) (odd indices), but the text has {len(odds)}; pass --importance FILE or "
            "a longer --text")
    return {"eval": _spread(evens, settings.passages), "prompts": _spread(evens, settings.prompts),
            "calibration": _spread(odds, cal)}


def calibration_importance(model: nn.Module, passages: torch.Tensor, *, method: str = "entropy",
                           block_size: int = 32, seed: int = 0,
                           names: Sequence[str] | None = None) -> HeadImportance:
    """Attention-statistics importance on calibration passages (whole passage = span).

    Args:
        model: the transformer.
        passages: (N, L) int64 calibration passages (never evaluation passages).
        method: one of :data:`STATISTIC_METHODS`.
        block_size: bs of the plans the scores will budget.
        seed: mask seed of the estimator.
        names: provenance names of the passages.
    """
    from adaptive_dllm.importance.calibration import CalibrationSet, Example
    from adaptive_dllm.importance.estimators import estimate_importance

    names = list(names) if names is not None else [f"passage {i}" for i in range(len(passages))]
    examples = tuple(Example(ids=p.long(), start=0, name=n) for p, n in zip(passages, names, strict=True))
    data = CalibrationSet(examples, {"kind": "held-out passages (not evaluated)", "names": names})
    return estimate_importance(model, data, method=method, seed=seed, block_size=block_size)


@torch.no_grad()
def evaluate_fidelity(
    model: nn.Module,
    passages: torch.Tensor,
    settings: FidelitySettings | None = None,
    *,
    importance: HeadImportance | None = None,
    tokenizer: Any = None,
    progress: bool = False,
    ranks: Ranks | None = None,
) -> FidelityReport:
    """Dense vs uniform vs adaptive sparse attention on held-out passages (module docstring).

    Args:
        model: the transformer (its device and dtype are used as they are).
        passages: (P_total, L) int64 held-out passages; evaluation, prompts and calibration are
            chosen from them by :func:`split_passages_for_fidelity`.
        settings: what to measure (default :class:`FidelitySettings`).
        importance: scores for ``adaptive``; None estimates them on calibration passages.
        tokenizer: passed to ``generate`` (unused for token-id prompts; may be None).
        progress: progress bars on stderr.
        ranks: torchrun ranks: each runs the dense reference and every ``world``-th sparse
            condition on the one-process inputs and batches; rows are gathered in plan order,
            so every rank returns exactly the one-process report.

    Returns:
        A :class:`FidelityReport`: the dense row first, then modes x selects in the order given.

    Raises:
        AdllmError: bad settings, too few passages, importance that does not fit the model,
            prompt + generation longer than a passage or the model's context.
    """
    s = settings or FidelitySettings()
    config = model.config
    device = next(model.parameters()).device
    if passages.ndim != 2 or passages.numel() == 0:
        raise AdllmError(f"passages must be a non-empty (P, L) tensor, got {tuple(passages.shape)}")
    L = passages.shape[1]
    if s.prompts and s.prompt_length + s.gen_length > config.max_seq_len:
        raise AdllmError(f"prompt length {s.prompt_length} + generation length {s.gen_length} "
                         f"exceeds the model context of {config.max_seq_len} tokens")
    if s.prompts and s.prompt_length > L:
        raise AdllmError(f"prompt length {s.prompt_length} exceeds the passage length {L}")
    if s.prompts:
        from adaptive_dllm.generation.api import make_options

        make_options(config.family, **sampler_options(model, s))  # fail before any work
    adaptive = "adaptive" in s.modes
    if importance is not None and not adaptive:
        raise AdllmError("an importance file is only used by the adaptive mode; add it to the modes")
    picked = split_passages_for_fidelity(passages.shape[0], s,
                                         need_calibration=adaptive and importance is None)
    started = time.perf_counter()
    importance, imp_info = _adaptive_importance(model, passages, s, importance, picked)
    backend = s.resolved_backend(device)
    note = (f"sparse attention forced to the {backend!r} backend (backend='auto' may run dense "
            f"attention on {device.type} for {L}-token inputs), so the numbers measure sparsity")
    ranks = ranks or Ranks()
    plan = [("dense", 1.0)] + [(m, sel) for m in s.modes if m != "dense" for sel in s.selects]
    # Every rank needs the dense reference; the sparse conditions are dealt over the ranks.
    mine = [0] + [i + 1 for i in shard(range(len(plan) - 1), ranks)]
    bar = progress_bar(len(mine) * (bool(s.passages) + bool(s.prompts)), progress)
    inputs = (passages[picked["eval"]], passages[picked["prompts"], : s.prompt_length].to(device))
    dense_gen: Generation | None = None
    rows: list[FidelityRow] = []
    for index in mine:
        mode, select = plan[index]
        cfg = None if mode == "dense" else SparseConfig(
            select=select, skip=s.skip, block_size=s.block_size, backend=backend,
            region=s.region, importance=importance if mode == "adaptive" else None)
        row, gen = _condition(model, tokenizer, inputs, cfg, s, FidelityRow(mode, select),
                              rows[0] if rows else None, dense_gen, bar, progress)
        dense_gen = dense_gen or gen
        rows.append(row)
    if bar is not None:
        bar.close()
    gathered = gather_objects(list(zip(mine, rows, strict=True)), ranks)
    by_index = {i: row for part in gathered for i, row in part}
    return FidelityReport(rows=[by_index[i] for i in range(len(plan))], settings=s,
                          backend=backend, backend_note=note, importance=imp_info,
                          passages=picked, elapsed_s=time.perf_counter() - started)


def _adaptive_importance(model: nn.Module, passages: torch.Tensor, s: FidelitySettings,
                         importance: HeadImportance | None, picked: dict[str, list[int]],
                         ) -> tuple[HeadImportance | None, dict[str, Any] | None]:
    """The adaptive mode's importance (given, or estimated on calibration passages) and its
    description; (None, None) without the adaptive mode."""
    if "adaptive" not in s.modes:
        return None, None
    if importance is None:
        cal = picked["calibration"]
        importance = calibration_importance(
            model, passages[cal], method=s.importance_method, block_size=s.block_size,
            seed=s.seed, names=[f"passage {i}" for i in cal])
        info = {"source": "estimated", "method": s.importance_method, "calibration_passages": cal}
    else:
        info = {"source": "file", "method": importance.metadata.get("estimator")}
    SparseConfig(importance=importance).weights(model.config)  # fits the model? (one-line error)
    return importance, info


def _condition(model: nn.Module, tokenizer: Any, inputs: tuple[torch.Tensor, torch.Tensor],
               cfg: SparseConfig | None, s: FidelitySettings, row: FidelityRow,
               dense: FidelityRow | None, dense_gen: Generation | None, bar: Any,
               progress: bool) -> tuple[FidelityRow, Generation | None]:
    """One (mode, select) row: likelihood and generation parts (``dense*`` None for dense)."""
    gen = None
    if s.passages:
        set_label(bar, f"NLL {row.mode} {row.select:g}")
        _likelihood(model, inputs[0], cfg, s, row, dense, progress)
        tick(bar)
    if s.prompts:
        set_label(bar, f"generate {row.mode} {row.select:g}")
        gen = generate_recorded(model, tokenizer, inputs[1], cfg, s, progress)
        compare(row, gen, dense_gen or gen)
        tick(bar)
    return row, gen


def _likelihood(model: nn.Module, passages: torch.Tensor, cfg: SparseConfig | None,
                s: FidelitySettings, row: FidelityRow, dense: FidelityRow | None,
                progress: bool) -> None:
    session = None
    if cfg is not None:
        lik = replace(cfg, likelihood=True, region="joint")
        session = lik.new_session(model.config, 1)
    results = masked_nll(model, passages, s.mask_ratios, seed=s.seed, batch_size=s.batch_size,
                         progress=progress, attn=session)
    row.nll = []
    for j, r in enumerate(results):
        base = r.bits_per_token if dense is None else dense.nll[j]["bits"]
        row.nll.append({"mask_ratio": r.mask_ratio, "bits": r.bits_per_token, "stderr": r.stderr,
                        "delta": r.bits_per_token - base})
    stats = None if session is None else session.stats()
    row.keep_nll = keep_ratio(stats)
    row.sparse_stats["nll"] = summarize_stats(stats)


def _spread(pool: list[int], n: int) -> list[int]:
    return [pool[i * len(pool) // n] for i in range(n)] if n else []


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
