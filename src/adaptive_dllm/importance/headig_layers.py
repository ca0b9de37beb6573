"""HeadIG per layer: one :func:`~adaptive_dllm.importance.headig.headig` run for each layer.

Each run moves only that layer's gates along the integration path, the other layers held at 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from adaptive_dllm._distributed import Ranks
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.importance.calibration import CalibrationSet, Example
from adaptive_dllm.importance.headig import HeadIGSettings, headig

__all__ = ["headig_per_layer", "layer_resume_path"]


def headig_per_layer(
    model: nn.Module,
    examples: CalibrationSet | Sequence[Example],
    settings: HeadIGSettings | None = None,
    *,
    checkpointing: bool | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    ranks: Ranks | None = None,
) -> HeadImportance:
    """HeadIG run separately for each layer of ``settings.layers`` (default all).

    Each run moves only that layer's gates along the path, the other layers held at 1, so a
    head is scored in the context of the full model rather than of a jointly shrunk one. Costs
    one :func:`headig` run per layer. ``resume`` names a file per layer: ``NAME.layerI.SUFFIX``.
    The metadata keeps every layer's completeness diagnostics under ``per_layer``.
    """
    settings = settings or HeadIGSettings()
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
    """The resume file of one layer of a per-layer run."""
    return resume.with_name(f"{resume.stem}.layer{layer}{resume.suffix}")
