"""What a benchmark sweep runs, and the random-weight models and sparse configs it runs them on.

Models are random-weight :class:`~adaptive_dllm.models.transformer.Transformer` s at the real
LLaDA-8B / Dream-7B geometry (the ``llada-8b`` / ``dream-7b`` model presets) with fewer layers;
prompts are random token ids (with random weights the text does not change the work done).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from adaptive_dllm._checks import check_float, check_int
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What to run. Defaults: the issue's target setting (skip 0.2, select 0.3, 128 steps/tokens)."""

    families: tuple[str, ...] = ("llada", "dream")
    lengths: tuple[int, ...] = (4096, 8192, 16384, 32768, 65536)
    e2e_lengths: tuple[int, ...] = (4096, 16384, 65536)
    n_layers: int = 4
    select: float = 0.3
    skip: float = 0.2
    block_size: int = 128
    steps: int = 128
    gen_length: int = 128
    llada_block_length: int = 32
    repeats: int = 5
    modes: tuple[str, ...] = ("uniform", "adaptive")
    cold: bool = True
    tiny: bool = False
    device: str = "cuda"
    dtype: str = "bfloat16"
    deadline: float | None = None  # time.monotonic() after which no generation starts
    largest_modes: tuple[str, ...] | None = None  # sparse modes at the largest e2e length
    #: Sparse backends: the kernel sweep times each, end to end runs the first (CUDA only for
    #: "triton"; a CPU smoke run uses flex).
    backends: tuple[str, ...] = ("triton", "flex")
    #: Cache sweep (issue 14): cache modes ("none", "prefix", "dual"; empty: the plain e2e
    #: protocol), fixed tokens per step or a threshold, sparse backends (``auto`` included).
    caches: tuple[str, ...] = ()
    tokens_per_step: int | None = None
    threshold: float | None = None
    cache_backends: tuple[str, ...] = ("auto",)
    window: int = 32  # queries of a cached step (decode kernel records)
    #: Timed generations per cache-protocol configuration (the record keeps the median run).
    e2e_repeats: int = 1
    #: Cached steps replayed from CUDA graphs (``generate(cuda_graphs=...)``).
    cuda_graphs: bool = True
    command: str | None = None  # the command line that made the records

    def __post_init__(self) -> None:
        bad = [c for c in self.caches if c not in ("none", "prefix", "dual")]
        if bad:
            raise AdllmError(f"cache {bad[0]!r} is not one of none, prefix, dual")
        if self.tokens_per_step is not None and self.threshold is not None:
            raise AdllmError("tokens_per_step and threshold exclude each other; give one")
        if self.threshold is not None:
            check_float("threshold", self.threshold, low=0.0, low_open=True)
        check_int("e2e_repeats", self.e2e_repeats)
        k = self.tokens_per_step
        if k is not None and (k < 1 or self.llada_block_length % k or self.gen_length % k):
            raise AdllmError(f"tokens_per_step={k} must divide the block length "
                             f"{self.llada_block_length} (and gen_length {self.gen_length})")

    @property
    def cache_sweep(self) -> bool:
        """Whether end-to-end runs follow the cache protocol (:mod:`~adaptive_dllm.bench.cache`)."""
        return bool(self.caches) or self.tokens_per_step is not None or self.threshold is not None

    def sparse_backends(self) -> tuple[str, ...]:
        """The backends this device can run, in order."""
        usable = tuple(b for b in self.backends if self.device == "cuda" or b != "triton")
        return usable or ("flex",)


#: The model preset of each family (:data:`~adaptive_dllm.models.config.PRESETS`).
PRESET_OF = {"llada": "llada-8b", "dream": "dream-7b"}


def model_config(family: str, *, n_layers: int, max_seq_len: int, tiny: bool = False) -> ModelConfig:
    """ModelConfig of ``family``'s real (or tiny) preset with ``n_layers`` layers."""
    name = f"{family}-tiny" if tiny else PRESET_OF[family]
    return ModelConfig.preset(name, n_layers=n_layers, max_seq_len=max_seq_len)


def random_model(config: ModelConfig, *, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A Transformer with random weights (normal, std 0.02; norms 1), built on ``device``."""
    from adaptive_dllm.models.transformer import Transformer

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def random_importance(config: ModelConfig, *, seed: int = 0) -> Any:
    """Log-normal per-KV-head scores (a realistic spread of budgets) as a HeadImportance."""
    from adaptive_dllm.importance.artifact import HeadImportance

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(config.n_layers, config.n_kv_heads, generator=g).exp()
    return HeadImportance(scores=scores, head_kind="kv",
                          metadata={"family": config.family, "estimator": "random (benchmark)",
                                    "n_heads": config.n_heads, "seed": seed})


def sparse_config(mode: str, config: ModelConfig, s: SweepSettings, *, backend: str | None = None,
                  select: float | None = None) -> Any:
    """The SparseConfig of a sweep run: ``mode`` uniform or adaptive (random importance) on
    ``backend`` (default: the settings' first usable sparse backend)."""
    from adaptive_dllm.sparsity.config import SparseConfig

    imp = random_importance(config) if mode == "adaptive" else None
    return SparseConfig(select=s.select if select is None else select, skip=s.skip,
                        block_size=s.block_size, importance=imp,
                        backend=backend or s.sparse_backends()[0])
