"""End-to-end generation records: dense vs uniform vs adaptive at one prompt length.

Protocol (DESIGN §5): the first sparse mode runs *cold* (first generation at this length in the
process), then a dense warm-up, dense, and every sparse mode warm; CUDA events; the ideal speedup
bound per record. Sparse statistics are the session's :class:`~adaptive_dllm.sparsity.stats.
SparseStats` as a dict.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from adaptive_dllm.bench.settings import SweepSettings, sparse_config
from adaptive_dllm.bench.timing import sdpa_backend
from adaptive_dllm.sparsity.cost import CostModel


def _generate(model: Any, ids: torch.Tensor, s: SweepSettings, *, sparse: Any = None,
              steps: int | None = None) -> dict[str, Any]:
    from adaptive_dllm.generation.api import generate

    opts: dict[str, Any] = {"steps": steps or s.steps, "gen_length": s.gen_length}
    if model.config.family == "llada":
        opts["block_length"] = min(s.llada_block_length, s.gen_length)
    if s.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = generate(model, None, ids, sparse=sparse, **opts)
    stats = out.stats.to_dict()
    stats.pop("step_s", None)
    if s.device == "cuda":
        torch.cuda.synchronize()
        stats["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    stats["ids_head"] = out.ids[0, :8].tolist()
    return stats


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def warmup_compile(model: Any, s: SweepSettings, *, length: int = 2048) -> dict[str, Any]:
    """One short sparse generation that compiles the sparse backend's kernels (reported
    separately: the backend's compile log)."""
    from adaptive_dllm.attention.api import get_backend

    ids = torch.randint(0, min(1000, model.config.mask_id), (1, length), device=s.device)
    sc = sparse_config("uniform", model.config, s)
    backend = get_backend(sc.backend)
    before = len(backend.compile_log)
    steps = 4 if model.config.family == "llada" else 2
    stats = _generate(model, ids, s, sparse=sc, steps=steps)
    compiles = [dataclasses.asdict(c) for c in backend.compile_log[before:]]
    return {"kind": "compile", "family": model.config.family, "seq_len": length + s.gen_length,
            "compile_s": sum(c["seconds"] for c in compiles), "signatures": compiles,
            "warmup_total_s": stats["total_s"]}


def e2e_records(model: Any, length: int, s: SweepSettings, *, dense_backend: str | None,
                attn_ms_per_layer: float | None,
                estimate_s: float | None = None) -> list[dict[str, Any]]:
    """End-to-end generation at a ``length``-token prompt.

    Order: the first sparse mode *cold* (the first generation at this length in the process,
    before anything else touched this shape), a short dense warm-up, dense, then every sparse
    mode warm. ``estimate_s`` (a guess of one generation) guards the cold run's deadline.
    """
    config = model.config
    g = torch.Generator(device=s.device).manual_seed(length)
    ids = torch.randint(0, min(config.vocab_size, config.mask_id), (1, length), device=s.device,
                        generator=g)
    base = {"kind": "e2e", "family": config.family, "prompt_len": length,
            "seq_len": length + s.gen_length, "n_layers": config.n_layers, "steps": s.steps,
            "gen_length": s.gen_length, "select": s.select, "skip": s.skip,
            "block_size": s.block_size, "dense_backend": dense_backend}
    modes = s.modes
    if s.largest_modes is not None and length == max(s.e2e_lengths):
        modes = s.largest_modes
    if not _fits_deadline(s, 2 * (estimate_s or 0.0)):
        guess = "" if estimate_s is None else f" (~{estimate_s:.0f} s a run)"
        return [{**base, "kind": "skipped", "reason": f"deadline{guess}"}]
    with sdpa_backend(dense_backend):
        cold = None
        if s.cold and modes:
            graphs = _dynamo_graphs()
            cold = (_generate(model, ids, s, sparse=sparse_config(modes[0], config, s)),
                    _dynamo_graphs() - graphs)
        warm_steps = 4 if config.family == "llada" else 2
        t0 = time.monotonic()
        _generate(model, ids, s, steps=warm_steps)  # cuDNN/cuBLAS plans for this shape
        estimate = (time.monotonic() - t0) / warm_steps * s.steps
        if not _fits_deadline(s, estimate):
            return [{**base, "kind": "skipped", "reason": f"deadline (dense ~{estimate:.0f} s)"}]
        dense = _generate(model, ids, s)
        records = [{**base, "mode": "dense", **_e2e_fields(dense)}]
        if cold is not None:
            records.append(_sparse_record(base, modes[0], "cold", cold[0], cold[1], dense, s,
                                          length, attn_ms_per_layer))
        for mode in modes:
            if not _fits_deadline(s, dense["total_s"]):
                records.append({**base, "kind": "skipped", "mode": mode, "run": "warm",
                                "reason": f"deadline (~{dense['total_s']:.0f} s)"})
                continue
            graphs = _dynamo_graphs()
            st = _generate(model, ids, s, sparse=sparse_config(mode, config, s))
            records.append(_sparse_record(base, mode, "warm", st, _dynamo_graphs() - graphs,
                                          dense, s, length, attn_ms_per_layer))
    return records


def _sparse_record(base: dict[str, Any], mode: str, run: str, st: dict[str, Any], new_graphs: int,
                   dense: dict[str, Any], s: SweepSettings, length: int,
                   attn_ms_per_layer: float | None) -> dict[str, Any]:
    sp = st["sparse"]
    dense_step = dense["step_median_s"]
    n_layers = base["n_layers"]
    auto = CostModel().decide(select=s.select, seq_len=length + s.gen_length,
                              device_type=s.device, sparse_steps=sp["sparse_steps"])
    rec = {**base, "mode": mode, "run": run, **_e2e_fields(st),
           "speedup": dense["total_s"] / st["total_s"], "new_graphs": new_graphs,
           "plan_build_s": sp["time_plan_s"], "dense_step_s": dense_step,
           "plan_over_dense_step": (sp["time_plan_s"] or 0) / dense_step,
           "peak_over_dense": st["peak_memory_gb"] / dense["peak_memory_gb"]
           if st.get("peak_memory_gb") and dense.get("peak_memory_gb") else None,
           "same_tokens_as_dense": st["ids_head"] == dense["ids_head"],
           "auto_decision": auto.backend, "auto_reason": auto.reason,
           "sparse_stats": sp}
    if attn_ms_per_layer is not None and sp["realized_keep_ratio"] is not None:
        ideal = ideal_e2e(dense_step, attn_ms_per_layer / 1000 * n_layers,
                           sp["realized_keep_ratio"], sp["dense_steps"], sp["sparse_steps"])
        rec["ideal_speedup"] = ideal
        rec["achieved_over_ideal"] = rec["speedup"] / ideal
    return rec


def _fits_deadline(s: SweepSettings, seconds: float) -> bool:
    return s.deadline is None or time.monotonic() + seconds <= s.deadline


def _e2e_fields(stats: dict[str, Any]) -> dict[str, Any]:
    return {"total_s": stats["total_s"], "step_median_s": stats["step_median_s"],
            "tokens_per_s": stats["tokens_per_s"], "peak_memory_gb": stats.get("peak_memory_gb")}


def ideal_e2e(dense_step: float, attention: float, keep: float, n_dense: int,
               n_sparse: int) -> float:
    """DESIGN §5 bound: dense_step / (linear + keep * attention) for the sparse steps."""
    linear = max(0.0, dense_step - attention)
    total = n_dense + n_sparse
    return total * dense_step / (n_dense * dense_step + n_sparse * (linear + keep * attention))
