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

Sparse attention is forced to run (``reference`` on the CPU, ``flex`` on CUDA) instead of
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
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.likelihood import masked_nll
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.models.families import get_family
from adaptive_dllm.sparsity.config import SparseConfig
from adaptive_dllm.sparsity.stats import SparseStats

Mode = Literal["dense", "uniform", "adaptive"]
MODES: tuple[str, ...] = get_args(Mode)
SparseBackend = Literal["reference", "flex"]
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
        backend: Sparse kernel; None = ``reference`` on the CPU, ``flex`` on CUDA.
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
            raise AdllmError(f"sparse backend {self.backend!r} must be 'reference' or 'flex'")
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
                     backend=self.backend or "reference")

    def resolved_backend(self, device: torch.device) -> str:
        """The sparse kernel that runs on ``device``."""
        return self.backend or ("flex" if device.type == "cuda" else "reference")

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
        return {"settings": self.settings.to_dict(), "backend": self.backend,
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

        make_options(config.family, **_sampler_options(model, s))  # fail before any work
    adaptive = "adaptive" in s.modes
    if importance is not None and not adaptive:
        raise AdllmError("an importance file is only used by the adaptive mode; add it to the modes")
    picked = split_passages_for_fidelity(passages.shape[0], s,
                                         need_calibration=adaptive and importance is None)
    started = time.perf_counter()
    imp_info = None
    if adaptive:
        if importance is None:
            cal = picked["calibration"]
            importance = calibration_importance(
                model, passages[cal], method=s.importance_method, block_size=s.block_size,
                seed=s.seed, names=[f"passage {i}" for i in cal])
            imp_info = {"source": "estimated", "method": s.importance_method,
                        "calibration_passages": cal}
        else:
            imp_info = {"source": "file", "method": importance.metadata.get("estimator")}
        SparseConfig(importance=importance).weights(config)  # fits the model? (one-line error)
    backend = s.resolved_backend(device)
    note = (f"sparse attention forced to the {backend!r} backend (backend='auto' may run dense "
            f"attention on {device.type} for {L}-token inputs), so the numbers measure sparsity")

    plan = [("dense", 1.0)] + [(m, sel) for m in s.modes if m != "dense" for sel in s.selects]
    bar = _bar(len(plan) * (bool(s.passages) + bool(s.prompts)), progress)
    eval_passages = passages[picked["eval"]]
    prompts = passages[picked["prompts"], : s.prompt_length].to(device)
    dense_gen: _Generation | None = None
    rows: list[FidelityRow] = []
    for mode, select in plan:
        row = FidelityRow(mode=mode, select=select)
        cfg = None if mode == "dense" else SparseConfig(
            select=select, skip=s.skip, block_size=s.block_size, backend=backend,
            region=s.region, importance=importance if mode == "adaptive" else None)
        if s.passages:
            _set(bar, f"NLL {mode} {select:g}")
            _likelihood(model, eval_passages, cfg, s, row, rows[0] if rows else None, progress)
            _tick(bar)
        if s.prompts:
            _set(bar, f"generate {mode} {select:g}")
            gen = _generate(model, tokenizer, prompts, cfg, s, progress)
            if dense_gen is None:
                dense_gen = gen
            _compare(row, gen, dense_gen)
            _tick(bar)
        rows.append(row)
    if bar is not None:
        bar.close()
    return FidelityReport(rows=rows, settings=s, backend=backend, backend_note=note,
                          importance=imp_info, passages=picked,
                          elapsed_s=time.perf_counter() - started)


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
    row.keep_nll = _keep(stats)
    row.sparse_stats["nll"] = _summary(stats)


@dataclass
class _Generation:
    ids: torch.Tensor  # (K, G)
    final: torch.Tensor  # (K, G, V) float32 logits of the last model call
    commit: torch.Tensor  # (K, G, V) float32 logits of the step that committed each position
    stats: dict[str, Any] | None


class _LogitTap(nn.Module):
    """The model, recording the generated positions' logits of every call (see module docstring)."""

    def __init__(self, model: nn.Module, prompt_length: int) -> None:
        super().__init__()
        self.model, self.config, self.start = model, model.config, prompt_length
        self.align = get_family(model.config.family).align_logits
        self.final: torch.Tensor | None = None
        self.commit: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, *, logits_from: int = 0, **kwargs: Any) -> torch.Tensor:
        # The sampler may skip the output head before its block; the recorder needs the whole
        # generated region (and, for a shifted family, the row before it).
        first = min(logits_from, max(self.start - 1, 0))
        logits = self.model(input_ids, logits_from=first, **kwargs)
        gen = self.align(logits)[:, self.start - first :].float()  # (K, G, V)
        masked = input_ids[:, self.start :, None] == self.config.mask_id  # (K, G, 1)
        self.commit = gen if self.commit is None else torch.where(masked, gen, self.commit)
        self.final = gen
        return logits[:, logits_from - first :]


def _generate(model: nn.Module, tokenizer: Any, prompts: torch.Tensor, cfg: SparseConfig | None,
              s: FidelitySettings, progress: bool) -> _Generation:
    from adaptive_dllm.generation.api import generate

    tap = _LogitTap(model, prompts.shape[1])
    bar = _bar(s.steps, progress, desc="denoising steps", leave=False)
    # generate() tells the session the generation length (region="separate" budgets).
    out = generate(tap, tokenizer, prompts, sparse=cfg, seed=s.seed,
                   on_step=(lambda done, total: _tick(bar)) if bar is not None else None,
                   **_sampler_options(model, s))
    if bar is not None:
        bar.close()
    return _Generation(ids=out.ids, final=tap.final, commit=tap.commit, stats=out.stats["sparse"])


def _sampler_options(model: nn.Module, s: FidelitySettings) -> dict[str, Any]:
    options: dict[str, Any] = {"gen_length": s.gen_length, "steps": s.steps, "temperature": 0.0}
    if get_family(model.config.family).sampler == "llada":
        options["block_length"] = s.block_length
    return options


def _compare(row: FidelityRow, gen: _Generation, dense: _Generation) -> None:
    row.token_agreement = float((gen.ids == dense.ids).double().mean())
    row.kl_final = float(kl_divergence(dense.final, gen.final).mean())
    row.kl_commit = float(kl_divergence(dense.commit, gen.commit).mean())
    row.keep_gen = _keep(gen.stats)
    row.sparse_stats["gen"] = _summary(gen.stats)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) in nats over the last axis, float64: (...,)."""
    lp = torch.log_softmax(p_logits.double(), dim=-1)
    lq = torch.log_softmax(q_logits.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def _keep(stats: dict[str, Any] | None) -> float:
    """Realised keep ratio; dense runs (no plan) keep every block."""
    if stats is None or stats.get("backend") == "dense" or stats.get("realized_keep_ratio") is None:
        return 1.0
    return float(stats["realized_keep_ratio"])


_SUMMARY_KEYS = SparseStats.summary_keys(detail=True)


def _summary(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if stats is None else {k: stats.get(k) for k in _SUMMARY_KEYS}


def _spread(pool: list[int], n: int) -> list[int]:
    return [pool[i * len(pool) // n] for i in range(n)] if n else []


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _bar(total: int, enabled: bool, *, desc: str = "fidelity", leave: bool = True) -> Any:
    if not enabled:
        return None
    from adaptive_dllm._progress import progress_bar  # tqdm on a terminal, lines in logs

    return progress_bar(total, desc=desc, unit="run" if leave else "step", leave=leave)


def _set(bar: Any, text: str) -> None:
    if bar is not None:
        bar.set_postfix_str(text)


def _tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)


# ---------------------------------------------------------------------------------------------
# Presentation


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header plus one row of cells per (mode, select) of a report dict (:meth:`FidelityReport.to_dict`)."""
    ratios = report["settings"]["mask_ratios"]
    head = ["mode", "select", "keep nll"] + [f"bpb@{r:g} (delta)" for r in ratios]
    lines = [head + ["agree", "KL final", "KL commit", "keep gen"]]
    for r in report["rows"]:
        cells = [r["mode"], f"{r['select']:.2f}", _num(r["keep_nll"], 3)]
        for j in range(len(ratios)):
            if r["nll"] is None:
                cells.append("-")
            else:
                e = r["nll"][j]
                delta = "" if r["mode"] == "dense" else f" ({e['delta']:+.4f})"
                cells.append(f"{e['bits']:.4f}{delta}")
        cells += [_num(r["token_agreement"], 3), _num(r["kl_final"], 4, "g"),
                  _num(r["kl_commit"], 4, "g"), _num(r["keep_gen"], 3)]
        lines.append(cells)
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a report dict (:meth:`FidelityReport.to_dict`)."""
    lines = table_rows(report)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(line, widths, strict=True))) for line in lines)


def format_markdown(report: dict[str, Any]) -> str:
    """The same table as GitHub markdown (for docs)."""
    lines = table_rows(report)
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines[1:]])


def _num(x: float | None, digits: int, kind: str = "f") -> str:
    return "-" if x is None else f"{x:.{digits}{kind}}"


def plot_fidelity(report: dict[str, Any], path: str | Path) -> Path:
    """PNG of quality vs select per mode: NLL per mask ratio, token agreement, KL (dense dashed).

    Raises:
        AdllmError: the file cannot be written.
    """
    # A Figure of its own: no pyplot state, no process-wide backend switch.
    from matplotlib.figure import Figure

    rows = report["rows"]
    dense = rows[0]
    ratios = report["settings"]["mask_ratios"]
    panels: list[tuple[str, Any]] = []
    if dense["nll"] is not None:
        panels += [(f"masked NLL, r={r:g} (bits/token)", lambda row, j=j: row["nll"][j]["bits"])
                   for j, r in enumerate(ratios)]
    if dense["token_agreement"] is not None:
        panels += [("token agreement with dense", lambda row: row["token_agreement"]),
                   ("KL(dense || sparse), nats", lambda row: row["kl_final"])]
    fig = Figure(figsize=(3.6 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    modes = [m for m in dict.fromkeys(r["mode"] for r in rows) if m != "dense"]
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    for ax, (title, get) in zip(axes[0], panels, strict=True):
        ax.axhline(get(dense), color="black", linestyle="--", linewidth=1, label="dense")
        for mode in modes:
            pts = sorted((r["select"], get(r)) for r in rows if r["mode"] == mode)
            kl = title.startswith("KL")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[mode],
                    label=f"{mode} (final step)" if kl else mode)
            if kl:
                pts = sorted((r["select"], r["kl_commit"]) for r in rows if r["mode"] == mode)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", linestyle=":",
                        color=colors[mode], label=f"{mode} (commit step)")
                ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("select (target keep ratio)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    s = report["settings"]
    fig.suptitle(f"fidelity to dense: block {s['block_size']}, skip {s['skip']:g}, "
                 f"backend {report['backend']}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    try:
        fig.savefig(out, dpi=120)
    except OSError as err:
        raise AdllmError(f"cannot write plot {str(out)!r} ({err})") from None
    return out
