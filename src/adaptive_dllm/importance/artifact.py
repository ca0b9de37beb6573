"""HeadImportance: per-head importance scores plus where they came from.

Shapes: Ly layers, H heads per layer in the scores (query heads or KV heads, see ``head_kind``).

**Sign convention: higher = more important, always.** Estimators whose natural output has the
opposite sign (HeadIG integrates the gradient of the *loss*, so useful heads come out negative)
convert before building the artifact; :meth:`HeadImportance.from_upstream` makes the choice
explicit with ``negate``.

**File format**: one ``.safetensors`` file holding the float32 tensor ``scores`` (Ly, H). Its
header (plain JSON at the start of the file, readable with ``head -c 2000 FILE``) carries
``format = "adaptive_dllm.head_importance"``, ``format_version``, ``head_kind`` and the provenance
``metadata`` as a JSON string. One file keeps scores and provenance together and lets
:meth:`HeadImportance.save` replace it atomically (temporary file, then rename).

NaN scores (an estimator that failed for some heads) are stored as they are;
:func:`~adaptive_dllm.budget.weights.relative_weights` replaces them by the median with a
warning. Scores with no finite value at all are refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor

from adaptive_dllm._io import atomic_write
from adaptive_dllm.budget.weights import relative_weights
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.upstream import read_upstream, upstream_settings
from adaptive_dllm.models.config import ModelConfig

logger = logging.getLogger(__name__)

HeadKind = Literal["query", "kv"]

SIGN = "higher_is_more_important"
FORMAT = "adaptive_dllm.head_importance"
FORMAT_VERSION = "1"
#: File name looked up when :meth:`HeadImportance.load` is given a directory.
DEFAULT_FILENAME = "head_importance.safetensors"
METADATA_KEYS = ("family", "n_layers", "n_heads", "n_kv_heads", "estimator", "settings", "data",
                 "seed", "sign", "library_version", "created")


@dataclass(frozen=True, eq=False)
class HeadImportance:
    """Importance of every attention head, higher = more important.

    Missing standard metadata keys are filled in (``family="unknown"``, the head counts from the
    shape, this library's version, the creation time, ...); keys that contradict the scores
    raise.

    Attributes:
        scores: Importance, float32, shape (Ly, H); stored as a detached CPU copy.
        head_kind: ``"query"`` if H counts query heads, ``"kv"`` if it counts KV heads.
        metadata: Provenance, JSON-serialisable: ``family``, ``n_layers``, ``n_heads`` (query
            heads of the model), ``n_kv_heads``, ``estimator``, ``settings`` (its options),
            ``data`` (what it ran on), ``seed``, ``sign`` (always ``higher_is_more_important``),
            ``library_version``, ``created`` (ISO 8601, UTC), plus any extra keys.
    """

    scores: Tensor
    head_kind: HeadKind
    metadata: dict[str, Any]

    def __post_init__(self) -> None:
        scores = _check_scores(self.scores)
        if self.head_kind not in ("query", "kv"):
            raise AdllmError(f"head_kind={self.head_kind!r} must be 'query' or 'kv'")
        if not isinstance(self.metadata, Mapping):
            raise AdllmError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "metadata", self._complete(dict(self.metadata)))

    def _complete(self, meta: dict[str, Any]) -> dict[str, Any]:
        n_layers, n_heads = self.scores.shape
        query = self.head_kind == "query"
        meta.setdefault("family", "unknown")
        meta.setdefault("n_layers", n_layers)
        meta.setdefault("n_heads", n_heads if query else None)
        meta.setdefault("n_kv_heads", None if query else n_heads)
        meta.setdefault("estimator", "unknown")
        meta.setdefault("settings", {})
        meta.setdefault("data", None)
        meta.setdefault("seed", None)
        meta.setdefault("sign", SIGN)
        meta.setdefault("library_version", library_version())
        meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if meta["sign"] != SIGN:
            raise AdllmError(
                f"metadata sign={meta['sign']!r}: convert the scores so that higher means more "
                f"important (negate them) and record sign={SIGN!r}"
            )
        for key in ("n_layers", "n_heads", "n_kv_heads"):
            value = meta[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise AdllmError(f"metadata {key}={value!r} must be a positive integer or null")
        stored = "n_heads" if query else "n_kv_heads"
        for key, value in (("n_layers", n_layers), (stored, n_heads)):
            if meta[key] is not None and meta[key] != value:
                raise AdllmError(f"metadata {key}={meta[key]!r} contradicts scores of shape "
                                 f"{tuple(self.scores.shape)} ({self.head_kind} heads)")
        q, kv = meta["n_heads"], meta["n_kv_heads"]
        if q is not None and kv is not None and q % kv:
            raise AdllmError(f"metadata n_heads={q} is not a multiple of n_kv_heads={kv}")
        meta = {**{key: meta[key] for key in METADATA_KEYS}, **meta}  # standard keys first
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise AdllmError(f"metadata must be JSON-serialisable: {err}") from None
        return meta

    # -- shape -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Ly, layers in ``scores``."""
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        """H, heads per layer in ``scores`` (query or KV heads, per ``head_kind``)."""
        return self.scores.shape[1]

    @property
    def group_size(self) -> int | None:
        """Query heads per KV head, from the metadata; None when the KV-head count is unknown."""
        q, kv = self.metadata["n_heads"], self.metadata["n_kv_heads"]
        return None if q is None or kv is None else q // kv

    def validate_shape(self, *, n_layers: int, n_heads: int, n_kv_heads: int | None = None) -> None:
        """Check the scores fit a model with these sizes.

        Raises:
            AdllmError: naming the scores' shape and the shape the model needs.
        """
        query = self.head_kind == "query"
        if not query and n_kv_heads is None:
            raise AdllmError("per-KV-head importance needs the model's n_kv_heads to validate")
        want_heads = n_heads if query else n_kv_heads
        if (self.n_layers, self.n_heads) == (n_layers, want_heads):
            return
        hint = "use importance estimated for this model"
        if query and n_kv_heads is not None and self.n_heads == n_kv_heads != n_heads:
            hint = "these look like per-KV-head scores: build the artifact with head_kind='kv'"
        raise AdllmError(
            f"importance scores have shape ({self.n_layers}, {self.n_heads}) ({self.head_kind} "
            f"heads) but the model needs ({n_layers}, {want_heads}) ({n_layers} layers x "
            f"{want_heads} {self.head_kind} heads); {hint}"
        )

    def validate_for(self, config: ModelConfig) -> None:
        """Check the scores fit ``config`` (layers and query or KV heads).

        Raises:
            AdllmError: naming both shapes.
        """
        self.validate_shape(n_layers=config.n_layers, n_heads=config.n_heads,
                            n_kv_heads=config.n_kv_heads)
        family = self.metadata.get("family")
        if family not in (None, "unknown", config.family):
            logger.warning("importance was estimated for family %r, the model is %r",
                           family, config.family)

    def weights(self, config_or_group_size: ModelConfig | int | None = None,
                **weight_options: Any) -> Tensor:
        """Relative weights (mean 1) for the allocator, see ``relative_weights``.

        Args:
            config_or_group_size: A ``ModelConfig`` (validated against, and giving the GQA
                group size), an explicit group size, or None to take it from the metadata
                (1 when unknown). Ignored for per-KV-head scores.
            **weight_options: Passed to :func:`~adaptive_dllm.budget.weights.relative_weights`
                (``normalize``, ``scale``, ``invert``, ``gqa``, ``reduce``).

        Returns:
            float64 weights, shape (Ly, Hu).
        """
        if isinstance(config_or_group_size, ModelConfig):
            self.validate_for(config_or_group_size)
            group = config_or_group_size.group_size
        elif config_or_group_size is None:
            group = self.group_size or 1
        else:
            group = config_or_group_size
        if self.head_kind == "kv":
            if weight_options.get("gqa") == "query":
                raise AdllmError("per-query-head weights (gqa='query') need query-head scores")
            group = 1
        return relative_weights(self.scores, group_size=group, **weight_options)

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact to one ``.safetensors`` file, atomically.

        Returns:
            The path written.

        Raises:
            AdllmError: the name does not end in ``.safetensors``, or the file cannot be written
                (nothing is left behind in that case).
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise AdllmError(f"importance file {path} must end in .safetensors")
        header = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "head_kind": self.head_kind, "metadata": json.dumps(self.metadata)}
        data = safetensors_save({"scores": self.scores}, metadata=header)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise AdllmError(f"cannot write importance file {path}: directory {path.parent} "
                             f"cannot be made ({err.strerror or err}); choose another path") from None
        # Unique temporary name, fsync, rename; the umask's permissions (not mkstemp's 0600).
        with atomic_write(path, "wb") as f:
            f.write(data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HeadImportance:
        """Read an artifact written by :meth:`save` (a file, or a directory holding
        ``head_importance.safetensors``).

        Raises:
            AdllmError: missing, unreadable or foreign file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / DEFAULT_FILENAME
        if path.suffix in (".pt", ".pth", ".bin"):
            raise AdllmError(f"{path} looks like an upstream torch file; import it with `adllm "
                             f"importance import {path} --negate|--no-negate --out "
                             "NEW.safetensors` (Python: HeadImportance.from_upstream)")
        if not path.is_file():
            raise AdllmError(f"importance file {path} not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                scores = f.get_tensor("scores") if "scores" in f.keys() else None
            meta = json.loads(header.get("metadata", "null"))
        except Exception as err:  # safetensors raises several types for corrupt files
            raise AdllmError(f"cannot read importance file {path}: {_one_line(err)}") from None
        if header.get("format") != FORMAT or scores is None or not isinstance(meta, dict):
            raise AdllmError(f"{path} is not a head-importance file (written by "
                             "HeadImportance.save)")
        if header.get("format_version") != FORMAT_VERSION:
            raise AdllmError(f"{path} has format version {header.get('format_version')!r}; this "
                             f"library reads version {FORMAT_VERSION}, upgrade adaptive-dllm")
        try:
            return cls(scores=scores, head_kind=header.get("head_kind"), metadata=meta)
        except AdllmError as err:
            raise AdllmError(f"{path}: {err}") from None

    @classmethod
    def from_upstream(
        cls,
        path: str | os.PathLike[str],
        *,
        negate: bool,
        family: str = "unknown",
        head_kind: HeadKind = "query",
        n_kv_heads: int | None = None,
        trusted: bool = False,
    ) -> HeadImportance:
        """Import the upstream ``torch.save`` format.

        The upstream file is a dict ``{"importance_scores": {layer: tensor[H]},
        "metadata": {...}}``; a 2-D tensor in place of the per-layer dict is accepted too.

        Args:
            path: The ``.pt`` file.
            negate: Required, no default. Upstream HeadIG scores are integrated gradients of the
                loss, so useful heads are *negative*: pass ``negate=True`` for them. Pass False
                for files that already follow higher = more important (e.g. ``*_neg`` files).
            family: Model family the scores belong to.
            head_kind: Whether the per-layer vectors count query heads (upstream default) or KV
                heads.
            n_kv_heads: KV heads of the model, if known (enables GQA aggregation).
            trusted: Allow arbitrary pickled objects in the file. Only for files you trust:
                unpickling can run code. By default only tensors and plain containers load.

        Raises:
            AdllmError: unreadable file or unexpected content.
        """
        path = Path(path)
        scores, upstream_meta = read_upstream(path, trusted=trusted)
        if head_kind == "kv" and n_kv_heads is not None and n_kv_heads != scores.shape[1]:
            raise AdllmError(f"n_kv_heads={n_kv_heads} contradicts {str(path)!r}: its scores of "
                             f"KV heads have {scores.shape[1]} columns; drop --kv-heads or fix it")
        if negate:
            scores = -scores
        estimator = "upstream"
        if isinstance(upstream_meta, Mapping):
            estimator = str(upstream_meta.get("method") or upstream_meta.get("estimator")
                            or "upstream")
        meta = {
            "family": family,
            "n_kv_heads": n_kv_heads if head_kind == "query" else scores.shape[1],
            "estimator": estimator,
            "settings": upstream_settings(path, negate=negate, metadata=upstream_meta),
        }
        return cls(scores=scores, head_kind=head_kind, metadata=meta)


def library_version() -> str:
    """The installed adaptive-dllm version, or ``"unknown"`` when running from a source tree."""
    try:
        return importlib_metadata.version("adaptive-dllm")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _check_scores(scores: Tensor) -> Tensor:
    if not isinstance(scores, Tensor):
        raise AdllmError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2 or scores.numel() == 0:
        raise AdllmError(f"scores must have shape (layers, heads), got {tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise AdllmError(f"scores must be real numbers, got dtype {scores.dtype}")
    scores = scores.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    if not bool(torch.isfinite(scores).any()):
        raise AdllmError(
            f"importance scores of shape {tuple(scores.shape)} have no finite value (all NaN or "
            "Inf); re-run the importance estimator"
        )
    return scores


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__

