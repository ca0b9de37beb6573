"""SparseConfig: every choice of the head-adaptive block-sparse attention, validated once.

A :class:`SparseConfig` is what users pass to ``generate(..., sparse=cfg)``. It is immutable and
model-independent; :meth:`SparseConfig.new_session` binds it to a model (checking the importance
shape) and returns the per-generation :class:`~adaptive_dllm.sparsity.session.SparseSession`.

Defaults and why:
    - ``block_size=128``: the ``triton`` kernel's tile is the block and flex runs 128 x 128
      tiles on Hopper, so a 128-token selection block maps to whole kernel tiles (the upstream
      32-token blocks left almost every tile partial, see upstream_reference.md §3); smaller
      blocks are allowed and slower (``benchmarks/README.md``).
    - ``region="separate"``: prompt keys and generation keys get their own budgets, as upstream,
      so a long prompt cannot starve the few generation blocks; the realised density is reported.
    - ``gqa="kv"``: one plan per KV head shared by its query-head group (real K/V savings).
    - ``backend="auto"``: the cost model (:mod:`~adaptive_dllm.sparsity.cost`) picks the
      ``triton`` kernel on CUDA where sparse attention pays off (measured faster than flex on an
      H100), dense elsewhere, and says which in the stats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from adaptive_dllm._checks import check_bool, check_choice, check_float
from adaptive_dllm.attention.mass import Estimator, GqaUnit
from adaptive_dllm.attention.reference import REFERENCE_BLOCK_SIZES
from adaptive_dllm.budget.allocator import BudgetMode
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.kernels.support import BLOCK_SIZES

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from adaptive_dllm.models.config import ModelConfig
    from adaptive_dllm.sparsity.session import SparseSession

Region = Literal["separate", "joint"]
BackendName = Literal["auto", "triton", "flex", "gather", "reference"]
Budget = BudgetMode
Refresh = Literal["block", "never"]
BuildKernel = Literal["fused", "separate"]

__all__ = ["BLOCK_SIZES", "REFERENCE_BLOCK_SIZES", "SparseConfig", "measuring_backend"]


@dataclass(frozen=True)
class SparseConfig:
    """Settings of head-adaptive block-sparse attention (SparseD schedule, exact budgets).

    Attributes:
        select: Mean fraction of key blocks kept over all allocation units, in (0, 1]; 1 runs
            dense attention exactly.
        skip: Fraction of denoising steps run densely before the plan is built, in [0, 1).
            Dense steps are ``max(1, ceil(skip * steps))`` (see ``sparsity.schedule``).
        block_size: Query and key block size in tokens, one of
            :data:`~adaptive_dllm.kernels.support.BLOCK_SIZES` (the reference backend also takes
            other powers of two for tests).
        importance: Head importance for adaptive budgets, or None for uniform budgets (SparseD).
        min_keep_ratio: Soft floor on every unit's keep ratio, in [0, 1] (see ``allocate``).
        region: ``"separate"``: prompt keys and generation keys are budgeted separately (the
            block straddling the boundary counts with the prompt, as upstream); ``"joint"``: one
            pool over all key blocks.
        gqa: ``"kv"``: one budget and plan per KV head, shared by its query heads (scores summed
            over the group); ``"query"``: per query head (ablation; K/V are still not repeated).
        backend: ``"auto"`` (cost model: the ``triton`` kernel on CUDA where sparse attention
            pays off, else dense), ``"triton"`` (the project's block-sparse Triton kernel,
            :mod:`~adaptive_dllm.kernels.block_sparse`), ``"flex"`` (FlexAttention),
            ``"gather"`` (gathers the kept key blocks; exact, any device, the fast sparse path
            on the CPU) or ``"reference"`` (eager oracle, CPU and GPU).
        likelihood: Build a fresh plan from every forward's own q/k (no dense steps), for
            likelihood scoring where each forward sees a different input.
        estimator: Block scores: ``"exact"`` attention mass, or ``"pooled"`` (block-mean q and
            k; cheap, approximate, validated against the exact mass in the tests).
        budget: ``"global"``: budget moves between layers; ``"per_layer"``: each layer keeps
            ``select`` of its blocks.
        weight_scale: Spread of the importance weights (``relative_weights(scale=...)``).
        refresh: ``"never"`` (default): the SparseD schedule, one plan for the rest of the
            generation; ``"block"``: the first step of every later LLaDA semi-autoregressive
            block runs dense and rebuilds the plan, so blocks that were all masks when the plan
            was built are planned from their text (one extra dense step and plan build per
            block). On the bundled model "block" did not raise greedy token agreement with dense
            (docs/fidelity.md), so it is not the default.
        build_kernel: How the build step gets its attention and its block scores. ``"fused"``
            (default): where it applies (CUDA, ``triton`` or ``flex``, exact scores) one Triton attention
            forward also writes the block scores (:mod:`~adaptive_dllm.kernels.attend_and_score`),
            so scoring costs a fraction of an attention instead of a second one; elsewhere it
            falls back to ``"separate"`` and the stats say which ran. ``"separate"``: the dense
            SDPA kernel, then the scoring kernel.
    """

    select: float = 0.3
    skip: float = 0.2
    block_size: int = 128
    importance: HeadImportance | None = None
    min_keep_ratio: float = 0.0
    region: Region = "separate"
    gqa: GqaUnit = "kv"
    backend: BackendName = "auto"
    likelihood: bool = False
    estimator: Estimator = "exact"
    budget: Budget = "global"
    weight_scale: float = 2 / 3
    refresh: Refresh = "never"
    build_kernel: BuildKernel = "fused"

    def __post_init__(self) -> None:
        check_float("select", self.select, low=0.0, high=1.0, low_open=True)
        check_float("skip", self.skip, low=0.0, high=1.0, high_open=True)
        check_float("min_keep_ratio", self.min_keep_ratio, low=0.0, high=1.0)
        check_float("weight_scale", self.weight_scale, low=0.0, high=1.0, high_open=True)
        for name, kind in (("region", Region), ("gqa", GqaUnit), ("backend", BackendName),
                           ("estimator", Estimator), ("budget", Budget), ("refresh", Refresh),
                           ("build_kernel", BuildKernel)):
            check_choice(name, getattr(self, name), get_args(kind))
        check_bool("likelihood", self.likelihood)
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs not in REFERENCE_BLOCK_SIZES:
            raise AdllmError(f"block_size={bs!r} is not valid; use one of "
                             f"{', '.join(map(str, BLOCK_SIZES))}")
        if self.backend not in ("reference", "gather") and bs not in BLOCK_SIZES:
            raise AdllmError(
                f"block_size={bs} is not supported by the {self.backend!r} backend; use one of "
                f"{', '.join(map(str, BLOCK_SIZES))} (other sizes only with backend 'reference' or 'gather')"
            )
        if self.importance is not None:
            if not isinstance(self.importance, HeadImportance):
                raise AdllmError(
                    f"importance must be a HeadImportance or None, got "
                    f"{type(self.importance).__name__}; load one with HeadImportance.load(path)"
                )
            if self.gqa == "query" and self.importance.head_kind == "kv":
                raise AdllmError("gqa='query' needs per-query-head importance scores; this "
                                 "artifact has per-KV-head scores (use gqa='kv')")

    @property
    def mode(self) -> str:
        """``"adaptive"`` with importance scores, ``"uniform"`` without."""
        return "uniform" if self.importance is None else "adaptive"

    @property
    def is_dense(self) -> bool:
        """``select == 1`` keeps every block: generation runs the dense path exactly."""
        return self.select >= 1.0

    def units_per_layer(self, config: ModelConfig) -> int:
        """Allocation units per layer: KV heads (``gqa="kv"``) or query heads."""
        return config.n_kv_heads if self.gqa == "kv" else config.n_heads

    def weights(self, config: ModelConfig) -> torch.Tensor:
        """Relative budget weights (mean 1) for ``config``, float64 (n_layers, units).

        Raises:
            AdllmError: the importance scores do not fit the model (one line naming both shapes).
        """
        from adaptive_dllm.budget.weights import uniform_weights

        if self.importance is None:
            return uniform_weights(config.n_layers, self.units_per_layer(config))
        return self.importance.weights(config, scale=self.weight_scale, gqa=self.gqa)

    def new_session(self, model_config: ModelConfig, total_steps: int, *,
                    gen_length: int | None = None,
                    block_starts: tuple[int, ...] = ()) -> SparseSession:
        """A fresh per-generation session (the model's attention hook).

        Args:
            model_config: The model the session will run on (checked against the importance).
            total_steps: Denoising steps of the generation (T).
            gen_length: Generated tokens at the end of the sequence (the generation region).
                Needed for ``region="separate"``; without it the session budgets jointly and
                says so in its stats.
            block_starts: First steps of the sampler's later semi-autoregressive blocks (LLaDA);
                with ``refresh="block"`` those in the sparse phase rebuild the plan.
        """
        from adaptive_dllm.sparsity.session import build_session

        return build_session(self, model_config, total_steps, gen_length=gen_length,
                             block_starts=block_starts)

    def describe(self) -> dict[str, object]:
        """JSON-ready summary of the settings (importance as its provenance, not its tensor)."""
        imp = None
        if self.importance is not None:
            meta = self.importance.metadata
            imp = {"shape": list(self.importance.scores.shape),
                   "head_kind": self.importance.head_kind,
                   "estimator": meta.get("estimator"), "family": meta.get("family")}
        return {"mode": self.mode, "select": self.select, "skip": self.skip,
                "block_size": self.block_size, "min_keep_ratio": self.min_keep_ratio,
                "region": self.region, "gqa": self.gqa, "backend": self.backend,
                "likelihood": self.likelihood, "estimator": self.estimator,
                "budget": self.budget, "weight_scale": self.weight_scale, "refresh": self.refresh,
                "build_kernel": self.build_kernel, "importance": imp}


def measuring_backend(device_type: str, block_size: int) -> BackendName:
    """The sparse kernel an evaluation forces so that sparse attention really runs (``auto`` would
    run dense where sparse is not faster): ``flex`` on CUDA for the block sizes flex runs
    (:data:`BLOCK_SIZES`), else ``gather``, which runs any block size on any device."""
    return "flex" if device_type == "cuda" and block_size in BLOCK_SIZES else "gather"
