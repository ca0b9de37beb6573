"""Command-line flags for sparse attention, shared by ``adllm generate``, ``eval`` and ``bench``.

Wiring a command takes two lines::

    add_sparse_arguments(parser)                  # in register()
    sparse = sparse_config_from_args(args)        # in run(): a SparseConfig, or None for dense

and, for ``--json`` output, ``summary_stats(out.stats["sparse"], steps)`` gives the keys every
report carries (:meth:`~adaptive_dllm.sparsity.stats.SparseStats.summary`), also for a dense run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.sparsity.config import BLOCK_SIZES, SparseConfig
from adaptive_dllm.sparsity.stats import SparseStats

_SPARSE_ONLY = ("select", "skip", "block_size", "importance", "min_keep_ratio", "region",
                "gqa_unit", "sparse_backend", "estimator", "refresh", "build_kernel")


def add_sparse_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sparse attention`` option group (all defaults None = not given)."""
    g = parser.add_argument_group(
        "sparse attention",
        "Block-sparse attention after the first --skip fraction of steps (SparseD schedule). "
        "Without --sparse, attention is dense.")
    g.add_argument("--sparse", choices=("uniform", "adaptive"), default=None,
                   help="uniform: every head keeps the same share of key blocks (SparseD); "
                        "adaptive: shares follow --importance")
    g.add_argument("--select", type=float, default=None, metavar="S",
                   help="mean fraction of key blocks kept, in (0, 1] (default 0.3; 1 = dense)")
    g.add_argument("--skip", type=float, default=None, metavar="K",
                   help="fraction of steps run dense before the plan is built (default 0.2)")
    g.add_argument("--block-size", type=int, default=None, choices=BLOCK_SIZES, metavar="B",
                   help=f"block size in tokens, one of {', '.join(map(str, BLOCK_SIZES))} "
                        "(default 128)")
    g.add_argument("--importance", default=None, metavar="FILE",
                   help="head importance file (adllm importance); needed by --sparse adaptive")
    g.add_argument("--min-keep-ratio", type=float, default=None, metavar="R",
                   help="floor on every head's keep ratio (default 0)")
    g.add_argument("--region", choices=("separate", "joint"), default=None,
                   help="budget prompt and generation keys separately (default) or jointly")
    g.add_argument("--gqa-unit", choices=("kv", "query"), default=None,
                   help="one budget per KV head (default) or per query head")
    g.add_argument("--sparse-backend", choices=("auto", "triton", "flex", "reference"),
                   default=None,
                   help="auto (default): the triton kernel on a GPU where sparse pays off, dense "
                        "otherwise; triton, flex (FlexAttention) or reference (eager) force one")
    g.add_argument("--refresh", choices=("block", "never"), default=None,
                   help="rebuild the plan at every later LLaDA block, or never (default, SparseD)")
    g.add_argument("--estimator", choices=("exact", "pooled"), default=None,
                   help="block scores: exact attention mass (default) or pooled q/k estimate")
    g.add_argument("--build-kernel", choices=("fused", "separate"), default=None,
                   help="build step on a GPU: one attention kernel that also scores blocks "
                        "(fused, default) or dense attention then a scoring kernel (separate)")


def sparse_config_from_args(args: argparse.Namespace) -> SparseConfig | None:
    """The SparseConfig the flags describe, or None without ``--sparse``.

    Raises:
        AdllmError: sparse flags without ``--sparse``, ``adaptive`` without ``--importance``,
            ``uniform`` with it, an unreadable importance file, or an invalid value.
    """
    mode = getattr(args, "sparse", None)
    given = {name: getattr(args, name, None) for name in _SPARSE_ONLY}
    given = {k: v for k, v in given.items() if v is not None}
    if mode is None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise AdllmError(f"{flags} only apply with --sparse uniform|adaptive")
        return None
    importance = None
    if mode == "adaptive":
        if "importance" not in given:
            raise AdllmError("--sparse adaptive needs --importance FILE (from `adllm importance`)")
        from adaptive_dllm.importance.artifact import HeadImportance

        importance = HeadImportance.load(given["importance"])
    elif "importance" in given:
        raise AdllmError("--importance is only used by --sparse adaptive (uniform ignores it)")
    options: dict[str, Any] = {}
    for flag, field in (("select", "select"), ("skip", "skip"), ("block_size", "block_size"),
                        ("min_keep_ratio", "min_keep_ratio"), ("region", "region"),
                        ("gqa_unit", "gqa"), ("sparse_backend", "backend"),
                        ("estimator", "estimator"), ("refresh", "refresh"),
                        ("build_kernel", "build_kernel")):
        if flag in given:
            options[field] = given[flag]
    return SparseConfig(importance=importance, **options)


def summary_stats(sparse_stats: Mapping[str, Any] | None, steps: int) -> dict[str, Any]:
    """The keys every generation report carries (:meth:`SparseStats.summary_keys`) from a
    session's stats; a dense run (None) reports ``steps`` dense steps and nothing kept."""
    if sparse_stats is None:
        dense = {"backend": "dense", "backend_reason": "no --sparse", "dense_steps": steps,
                 "sparse_steps": 0, "target_keep_ratio": 1.0, "realized_keep_ratio": None}
        return {k: dense.get(k) for k in SparseStats.summary_keys()}
    return {k: sparse_stats.get(k) for k in SparseStats.summary_keys()}
