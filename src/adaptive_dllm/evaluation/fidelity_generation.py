"""Generation fidelity: dense and sparse runs of the same prompts, compared token by token.

Shape legend: K prompts, Lp prompt length, G generated tokens, V vocabulary.

See :mod:`adaptive_dllm.evaluation.fidelity` for the definitions of ``token_agreement``,
``kl_final`` and ``kl_commit``; this module records the logits they need while the sampler runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adaptive_dllm.models.families import get_family
from adaptive_dllm.sparsity.config import SparseConfig
from adaptive_dllm.sparsity.stats import SparseStats

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.evaluation.fidelity import FidelityRow, FidelitySettings

__all__ = ["SUMMARY_KEYS", "Generation", "compare", "generate_recorded", "keep_ratio", "kl_divergence",
           "progress_bar", "sampler_options", "set_label", "summarize_stats", "tick"]


@dataclass
class Generation:
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


def generate_recorded(model: nn.Module, tokenizer: Any, prompts: torch.Tensor,
                      cfg: SparseConfig | None, s: FidelitySettings, progress: bool) -> Generation:
    """Generate from ``prompts`` (K, Lp) with ``cfg`` (None = dense), recording the logits."""
    from adaptive_dllm.generation.api import generate

    tap = _LogitTap(model, prompts.shape[1])
    bar = progress_bar(s.steps, progress, desc="denoising steps", leave=False)
    # generate() tells the session the generation length (region="separate" budgets).
    out = generate(tap, tokenizer, prompts, sparse=cfg, seed=s.seed,
                   on_step=(lambda done, total: tick(bar)) if bar is not None else None,
                   **sampler_options(model, s))
    if bar is not None:
        bar.close()
    return Generation(ids=out.ids, final=tap.final, commit=tap.commit, stats=out.stats["sparse"])


def sampler_options(model: nn.Module, s: FidelitySettings) -> dict[str, Any]:
    """Greedy sampler options of a fidelity generation."""
    options: dict[str, Any] = {"gen_length": s.gen_length, "steps": s.steps, "temperature": 0.0}
    if get_family(model.config.family).sampler == "llada":
        options["block_length"] = s.block_length
    return options


def compare(row: FidelityRow, gen: Generation, dense: Generation) -> None:
    """Fill ``row``'s generation metrics: ``gen`` against the ``dense`` run."""
    row.token_agreement = float((gen.ids == dense.ids).double().mean())
    row.kl_final = float(kl_divergence(dense.final, gen.final).mean())
    row.kl_commit = float(kl_divergence(dense.commit, gen.commit).mean())
    row.keep_gen = keep_ratio(gen.stats)
    row.sparse_stats["gen"] = summarize_stats(gen.stats)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) in nats over the last axis, float64: (...,)."""
    lp = torch.log_softmax(p_logits.double(), dim=-1)
    lq = torch.log_softmax(q_logits.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def keep_ratio(stats: dict[str, Any] | None) -> float:
    """Realised keep ratio; dense runs (no plan) keep every block."""
    if stats is None or stats.get("backend") == "dense" or stats.get("realized_keep_ratio") is None:
        return 1.0
    return float(stats["realized_keep_ratio"])


SUMMARY_KEYS = SparseStats.summary_keys(detail=True)


def summarize_stats(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """The session-stat keys a fidelity row reports."""
    return None if stats is None else {k: stats.get(k) for k in SUMMARY_KEYS}


def progress_bar(total: int, enabled: bool, *, desc: str = "fidelity", leave: bool = True) -> Any:
    if not enabled:
        return None
    from adaptive_dllm._progress import progress_bar as bar  # tqdm on a terminal, lines in logs

    return bar(total, desc=desc, unit="run" if leave else "step", leave=leave)


def set_label(bar: Any, text: str) -> None:
    if bar is not None:
        bar.set_postfix_str(text)


def tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)
