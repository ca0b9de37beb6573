"""ModelConfig: everything the transformer needs to know, for every family."""

from __future__ import annotations

from dataclasses import dataclass

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
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AdllmError(f"config {name}={value!r} must be a positive integer")
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
