"""What a HeadIG run keeps: its resume file, the per-example results gathered from every rank,
and the :class:`~adaptive_dllm.importance.artifact.HeadImportance` built from them.

Shape legend: N examples, Ly layers, H query heads per layer.

A resume file holds the per-example attributions done so far (``ig``, ``j_full``, ``j_base``)
and a fingerprint of the settings, model and data; a run with another fingerprint refuses it
rather than mixing two runs. Files are written atomically after every example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adaptive_dllm._distributed import Ranks, gather_objects
from adaptive_dllm._io import atomic_write
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.importance.calibration import CalibrationSet, Example
from adaptive_dllm.importance.gate_paths import postprocess
from adaptive_dllm.models.checkpoints import record_path

if TYPE_CHECKING:
    from adaptive_dllm.importance.headig import HeadIGSettings

log = logging.getLogger("adaptive_dllm.importance.headig")

__all__ = ["build_artifact", "fingerprint", "finite_or_none", "gather_examples", "load_state",
           "rel_gap", "save_state"]


def fingerprint(model: nn.Module, examples: Sequence[Example], settings: HeadIGSettings) -> str:
    """What a resume file must match: settings that change the result, model, data."""
    s = asdict(settings)
    s.pop("postprocess")  # applied at the end: a resumed run may change it
    s.pop("mask_batch_size")  # does not change the result
    h = hashlib.sha256()
    for e in examples:
        h.update(e.name.encode())
        h.update(e.ids.numpy().tobytes())
        h.update(str(e.start).encode())
    info = {"settings": s, "config": asdict(model.config), "source": getattr(model, "source", None),
            "data": h.hexdigest()}
    return json.dumps(info, sort_keys=True, default=str)


def load_state(path: Path | None, fingerprint: str) -> dict[str, Any]:
    """The saved partial results of this run (empty without a file); refuses a damaged file
    or one written for other settings, data or model."""
    if path is None or not path.is_file():
        return {"fingerprint": fingerprint, "ig": [], "j_full": [], "j_base": []}
    damaged = (f"resume file {str(path)!r} is not a HeadIG resume file or is damaged (%s); "
               "delete it or pass another --resume path")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...: many exception types
        raise AdllmError(damaged % " ".join(str(err).split())[:120]) from None
    keys = ("fingerprint", "ig", "j_full", "j_base")
    if not isinstance(state, dict) or not all(k in state for k in keys):
        raise AdllmError(damaged % "missing entries")
    if not all(isinstance(state[k], list) for k in keys[1:]) or not (
            len(state["ig"]) == len(state["j_full"]) == len(state["j_base"])):
        raise AdllmError(damaged % "inconsistent entries")
    if state.get("fingerprint") != fingerprint:
        raise AdllmError(
            f"resume file {str(path)!r} was written for other settings, data or model; delete it or "
            "pass another --resume path"
        )
    log.info("resuming HeadIG from %s: %d example(s) done", path, len(state["ig"]))
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    # Unique temporary name next to the file (concurrent runs never share one), fsync, rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def gather_examples(mine: Sequence[int], state: dict[str, Any], ranks: Ranks) -> dict[str, list]:
    """Every example's (ig, j_full, j_base) in example order, gathered from every rank.

    Gathering the per-example tensors (instead of all-reducing their sum) keeps the final mean
    in one fixed order, so the result is bit-identical to a one-process run.
    """
    parts = gather_objects((list(mine), state["ig"], state["j_full"], state["j_base"]), ranks)
    rows = sorted((i, ig, jf, jb) for idx, igs, jfs, jbs in parts
                  for i, ig, jf, jb in zip(idx, igs, jfs, jbs, strict=True))
    return {"ig": [r[1] for r in rows], "j_full": [r[2] for r in rows], "j_base": [r[3] for r in rows]}


def build_artifact(model: nn.Module, examples: CalibrationSet | Sequence[Example],
              settings: HeadIGSettings, state: dict[str, list], layers: range,
              checkpointing: bool, elapsed: float) -> HeadImportance:
    """The HeadImportance of the gathered per-example attributions, with its metadata."""
    cfg = model.config
    shape = (cfg.n_layers, cfg.n_heads)
    per_example = torch.stack(state["ig"]).double()  # (N, Ly, H)
    scores = postprocess(per_example, settings.postprocess).mean(0).float()
    outside = torch.ones(shape, dtype=torch.bool)
    outside[layers.start : layers.stop] = False
    scores[outside] = float("nan")
    sums = per_example.sum((1, 2))
    deltas = torch.tensor(state["j_full"], dtype=torch.float64) - torch.tensor(state["j_base"],
                                                                                dtype=torch.float64)
    gaps = [rel_gap(float(s), float(d)) for s, d in zip(sums, deltas, strict=True)]
    exs = list(examples)
    metadata = {
        "estimator": "headig",
        "sign": "higher_is_more_important",
        "objective": "J = -masked cross-entropy on the completion span (logits aligned per family)",
        "integration": f"{settings.rule} Riemann sum over t_k = k/K",
        "settings": asdict(settings),
        "seed": settings.seed,
        "data": examples.description if isinstance(examples, CalibrationSet) else
        {"n": len(exs), "names": [e.name for e in exs][:50]},
        "layers_attributed": [layers.start, layers.stop - 1],
        "passes_per_example": settings.passes_per_example,
        "completeness": {
            "j_full_mean": float(torch.tensor(state["j_full"]).mean()),
            "j_baseline_mean": float(torch.tensor(state["j_base"]).mean()),
            "ig_sum_mean": float(sums.mean()),
            "rel_gap_mean": finite_or_none(sum(gaps) / len(gaps)),
            "rel_gap_max": finite_or_none(max(gaps)),
        },
        "family": cfg.family,
        "n_kv_heads": cfg.n_kv_heads,
        "model": record_path(getattr(model, "source", None)),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "checkpointing": checkpointing,
        "elapsed_s": round(elapsed, 2),
        "torch": torch.__version__,
    }
    return HeadImportance(scores=scores, head_kind="query", metadata=metadata)


def rel_gap(ig_sum: float, delta: float) -> float:
    """|sum IG - (J(1) - J(alpha0))| / |J(1) - J(alpha0)| (0 when both vanish)."""
    if delta == 0.0:
        return 0.0 if ig_sum == 0.0 else math.inf
    return abs(ig_sum - delta) / abs(delta)


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
