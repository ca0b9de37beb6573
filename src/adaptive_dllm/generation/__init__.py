"""Denoising samplers (LLaDA, Dream) and the public ``generate``."""

from adaptive_dllm.generation.api import GenerationOutput, generate, make_options
from adaptive_dllm.generation.cache import FAST_OPTIONS
from adaptive_dllm.generation.dream import DreamOptions, sample_dream
from adaptive_dllm.generation.llada import LladaOptions, sample_llada

__all__ = [
    "FAST_OPTIONS",
    "DreamOptions",
    "GenerationOutput",
    "LladaOptions",
    "generate",
    "make_options",
    "sample_dream",
    "sample_llada",
]
