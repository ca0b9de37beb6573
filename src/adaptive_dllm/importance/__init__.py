"""Head importance: estimators (attention statistics, HeadIG), pruning tests, and the artifact
that stores scores with their provenance (higher = more important, always)."""

from adaptive_dllm.importance.artifact import HeadImportance, HeadKind, library_version
from adaptive_dllm.importance.calibration import CalibrationSet, Example, load_calibration
from adaptive_dllm.importance.comparison import average_importance, compare
from adaptive_dllm.importance.estimators import (
    attention_statistics,
    estimate_importance,
    random_importance,
    uniform_importance,
)
from adaptive_dllm.importance.headig import HeadIGSettings
from adaptive_dllm.importance.pruning import GatedModel, prune_gates, pruning_test

__all__ = [
    "CalibrationSet",
    "Example",
    "GatedModel",
    "HeadIGSettings",
    "HeadImportance",
    "HeadKind",
    "attention_statistics",
    "average_importance",
    "compare",
    "estimate_importance",
    "library_version",
    "load_calibration",
    "prune_gates",
    "pruning_test",
    "random_importance",
    "uniform_importance",
]
