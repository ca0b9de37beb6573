"""Reading the upstream research code's ``torch.save`` importance files.

The upstream file is a dict ``{"importance_scores": {layer: tensor[H]}, "metadata": {...}}``
(a 2-D tensor in place of the per-layer dict is accepted too). Shapes: Ly layers, H heads.
:meth:`~adaptive_dllm.importance.artifact.HeadImportance.from_upstream` builds the artifact
(with the explicit sign decision) from what :func:`read_upstream` returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adaptive_dllm.errors import AdllmError

__all__ = ["read_upstream", "upstream_settings"]


def read_upstream(path: Path, *, trusted: bool) -> tuple[Tensor, Any]:
    """(scores (Ly, H) float32 as stored, the file's ``metadata`` entry or ``{}``).

    ``trusted`` allows arbitrary pickled objects (unpickling can run code); by default only
    tensors and plain containers load.

    Raises:
        AdllmError: missing, truncated or corrupt file, objects beyond tensors without
            ``trusted``, or unexpected content.
    """
    if not path.is_file():
        raise AdllmError(f"upstream importance file {path} not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:  # pickle and zip errors of many kinds
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe and not trusted:  # a whole file that only a full unpickler reads
            raise AdllmError(f"upstream importance file {path} holds objects beyond tensors "
                             f"({unsafe[1]}); if you trust it, pass --trusted (Python: "
                             "trusted=True)") from None
        raise AdllmError(f"cannot read upstream importance file {path}: truncated, corrupt "
                         f"or not a torch file ({_first_sentence(err)})") from None
    if not isinstance(raw, Mapping) or "importance_scores" not in raw:
        raise AdllmError(f"{path} has no 'importance_scores' entry; expected the upstream "
                         "dict {'importance_scores': {layer: tensor}, 'metadata': {...}}")
    return _stack_layers(raw["importance_scores"], path), raw.get("metadata") or {}


def upstream_settings(path: Path, *, negate: bool, metadata: Any) -> dict[str, Any]:
    """The artifact's ``settings`` provenance of an imported file."""
    return {"imported_from": str(path), "negated_on_import": bool(negate),
            "upstream_metadata": _jsonable(metadata)}


def _stack_layers(per_layer: Any, path: Path) -> Tensor:
    """Upstream ``{layer: tensor[H]}`` (int or digit-string keys) -> (Ly, H) float32."""
    if isinstance(per_layer, Tensor):
        if per_layer.dim() != 2:
            raise AdllmError(f"{path}: importance_scores tensor has shape "
                             f"{tuple(per_layer.shape)}, expected (layers, heads)")
        return per_layer.float()
    if not isinstance(per_layer, Mapping) or not per_layer:
        raise AdllmError(f"{path}: importance_scores must be a non-empty dict {{layer: tensor}}")
    try:
        layers = {int(k): torch.as_tensor(v, dtype=torch.float32).flatten()
                  for k, v in per_layer.items()}
    except (TypeError, ValueError) as err:
        raise AdllmError(f"{path}: cannot read importance_scores: {_first_sentence(err)}") from None
    missing = sorted(set(range(len(layers))) - set(layers))
    if missing:
        raise AdllmError(f"{path}: layers must be numbered 0..{len(layers) - 1}; "
                         f"missing {missing[:5]}")
    widths = {v.numel() for v in layers.values()}
    if len(widths) != 1:
        raise AdllmError(f"{path}: layers have different head counts {sorted(widths)}")
    return torch.stack([layers[i] for i in range(len(layers))])


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of upstream metadata to JSON values: tensors become lists (or a
    shape note when large), NaN and Inf their names, other objects their ``str``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return _jsonable(value.tolist()) if value.numel() <= 4096 else f"<tensor {list(value.shape)}>"
    if isinstance(value, float) and not math.isfinite(value):  # NaN and Inf are not JSON
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _first_sentence(err: BaseException) -> str:
    # torch.load's messages run to paragraphs of advice for Python callers.
    text = " ".join(str(err).split()).split(". ")[0].rstrip(".")
    return text[:200] or type(err).__name__
