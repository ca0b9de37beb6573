"""ModelConfig: everything the transformer needs to know, for every family, and named presets.

Presets (:data:`PRESETS`, :meth:`ModelConfig.preset`) are the one copy of the real model
geometries (LLaDA-8B, Dream-v0-7B) and of their tiny CPU twins: benchmarks build random-weight
models from them, reports take their head counts from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from adaptive_dllm._checks import check_int
from adaptive_dllm.errors import AdllmError


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of the bidirectional transformer.

    Families differ only by these values (and by their :class:`~adaptive_dllm.models.families.
    FamilySpec`): GQA, q/k/v bias, rope theta, norm eps, tied embeddings and special token ids.
    """

    family: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_seq_len: int = 4096
    mask_id: int = 0
    eos_id: int | None = None
    pad_id: int | None = None
    bos_id: int | None = None
    head_dim: int = 0  # 0 = hidden_size // n_heads

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                     "intermediate_size", "max_seq_len"):
            check_int(f"config {name}", getattr(self, name))
        if self.n_heads % self.n_kv_heads:
            raise AdllmError(
                f"config n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim == 0:
            if self.hidden_size % self.n_heads:
                raise AdllmError(
                    f"config hidden_size={self.hidden_size} is not divisible by "
                    f"n_heads={self.n_heads}; give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.n_heads)
        if self.head_dim % 2:
            raise AdllmError(f"config head_dim={self.head_dim} must be even for rotary embeddings")
        if not 0 <= self.mask_id < self.vocab_size:
            raise AdllmError(
                f"config mask_id={self.mask_id} is outside the vocabulary (size {self.vocab_size})"
            )

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The named geometry (:data:`PRESETS`), with ``overrides`` (e.g. ``n_layers``,
        ``max_seq_len``) applied."""
        if name not in PRESETS:
            raise AdllmError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        if ("hidden_size" in overrides or "n_heads" in overrides) and "head_dim" not in overrides:
            overrides["head_dim"] = 0  # derive it again from the new sizes
        return dataclasses.replace(PRESETS[name], **overrides)


#: Real geometries (LLaDA-8B, Dream-v0-7B; full depth, 4k context) and tiny variants with the
#: same family traits for CPU smoke runs.
PRESETS = MappingProxyType({
    "llada-8b": ModelConfig(family="llada", vocab_size=126464, hidden_size=4096, n_layers=32,
                            n_heads=32, n_kv_heads=32, intermediate_size=12288,
                            rope_theta=500000.0, norm_eps=1e-5, mask_id=126336, eos_id=126081,
                            pad_id=126081),
    "dream-7b": ModelConfig(family="dream", vocab_size=152064, hidden_size=3584, n_layers=28,
                            n_heads=28, n_kv_heads=4, intermediate_size=18944,
                            rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, mask_id=151666,
                            eos_id=151643, pad_id=151643),
    "llada-tiny": ModelConfig(family="llada", vocab_size=128, hidden_size=64, n_layers=2,
                              n_heads=4, n_kv_heads=4, intermediate_size=128, mask_id=126,
                              eos_id=125, pad_id=125),
    "dream-tiny": ModelConfig(family="dream", vocab_size=160, hidden_size=64, n_layers=2,
                              n_heads=4, n_kv_heads=2, intermediate_size=128, qkv_bias=True,
                              mask_id=150, eos_id=148, pad_id=148),
})
