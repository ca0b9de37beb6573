"""Head importance: the artifact that stores scores with their provenance."""

from adaptive_dllm.importance.artifact import HeadImportance, HeadKind, library_version

__all__ = ["HeadImportance", "HeadKind", "library_version"]
