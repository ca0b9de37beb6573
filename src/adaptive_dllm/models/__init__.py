"""Models: one transformer, families as data, checkpoint loading."""

from adaptive_dllm.models.checkpoints import load, load_model, load_tokenizer, read_config
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.models.families import FamilySpec, get_family
from adaptive_dllm.models.transformer import Transformer

__all__ = [
    "FamilySpec",
    "ModelConfig",
    "Transformer",
    "get_family",
    "load",
    "load_model",
    "load_tokenizer",
    "read_config",
]
