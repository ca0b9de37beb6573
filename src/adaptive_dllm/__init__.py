"""adaptive-dllm: diffusion LM inference with head-adaptive block-sparse attention.

    import adaptive_dllm as ad
    model, tok = ad.load()                      # the bundled Shakespeare model (or a checkpoint dir)
    out = ad.generate(model, tok, "ROMEO:", steps=64, gen_length=128)
    out.text, out.stats

Names are resolved lazily so that ``import adaptive_dllm`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "adaptive_dllm.models.checkpoints",
    "ModelConfig": "adaptive_dllm.models.config",
    "Transformer": "adaptive_dllm.models.transformer",
    "AdllmError": "adaptive_dllm.errors",
    "attend": "adaptive_dllm.attention.api",
    "generate": "adaptive_dllm.generation.api",
    "GenerationOutput": "adaptive_dllm.generation.api",
    "HeadImportance": "adaptive_dllm.importance.artifact",
    "estimate_importance": "adaptive_dllm.importance.estimators",
    "relative_weights": "adaptive_dllm.budget.weights",
    "allocate": "adaptive_dllm.budget.allocator",
    "Allocation": "adaptive_dllm.budget.allocator",
    "SparseConfig": "adaptive_dllm.sparsity.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.attention.api import attend  # noqa: F401
    from adaptive_dllm.budget.allocator import Allocation, allocate  # noqa: F401
    from adaptive_dllm.budget.weights import relative_weights  # noqa: F401
    from adaptive_dllm.errors import AdllmError  # noqa: F401
    from adaptive_dllm.generation.api import GenerationOutput, generate  # noqa: F401
    from adaptive_dllm.importance.artifact import HeadImportance  # noqa: F401
    from adaptive_dllm.importance.estimators import estimate_importance  # noqa: F401
    from adaptive_dllm.models.checkpoints import load  # noqa: F401
    from adaptive_dllm.models.config import ModelConfig  # noqa: F401
    from adaptive_dllm.models.transformer import Transformer  # noqa: F401
    from adaptive_dllm.sparsity.config import SparseConfig  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptive_dllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
