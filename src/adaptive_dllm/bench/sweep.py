"""Benchmark sweeps: attention kernels and end-to-end generation, dense vs uniform vs adaptive.

Every measurement becomes one JSON record (``kind`` = ``kernel``, ``e2e`` or ``decode`` (the
cached-step kernel), plus ``compile`` for the one-time compilation) carrying the environment
(:func:`~adaptive_dllm.bench.timing.environment`). Protocol (DESIGN §5): the dense baseline is
the fastest dense SDPA backend measured in the same process; warm-up runs are excluded; CUDA
events; medians.

Models (:mod:`~adaptive_dllm.bench.settings`) have the real LLaDA-8B / Dream-7B geometry with
fewer layers: the per-layer ratio is what the kernel sweep measures; end-to-end ratios
(:mod:`~adaptive_dllm.bench.e2e`) then hold for that depth, the LM head included. Reports of the
records are in :mod:`~adaptive_dllm.bench.reports`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import torch

from adaptive_dllm.bench.cache import cache_e2e_records, copy_rate_gbs, decode_records
from adaptive_dllm.bench.e2e import e2e_records, warmup_compile
from adaptive_dllm.bench.settings import (
    SweepSettings,
    model_config,
    random_importance,
    random_model,
    sparse_config,
)
from adaptive_dllm.bench.timing import environment, fastest_dense, time_fn
from adaptive_dllm.kernels.support import n_blocks
from adaptive_dllm.models.config import ModelConfig

__all__ = ["SweepSettings", "kernel_records", "model_config", "random_importance", "random_model",
           "run_sweep", "sparse_config"]

# -- kernels ------------------------------------------------------------------------------------
def kernel_records(family: str, length: int, s: SweepSettings) -> list[dict[str, Any]]:
    """Per-layer attention at ``length`` tokens: fastest dense SDPA, flex sparse (uniform and
    adaptive), flex with every block kept (kernel efficiency), and the plan build."""
    from adaptive_dllm.attention.api import attend, get_backend
    from adaptive_dllm.attention.mass import block_mass
    from adaptive_dllm.attention.plan import build_plan

    dtype = getattr(torch, s.dtype)
    cfg = model_config(family, n_layers=1, max_seq_len=length, tiny=s.tiny)
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator(device=s.device).manual_seed(length)
    q = torch.randn(1, H, length, D, device=s.device, dtype=dtype, generator=g)
    k = torch.randn(1, Hkv, length, D, device=s.device, dtype=dtype, generator=g)
    v = torch.randn(1, Hkv, length, D, device=s.device, dtype=dtype, generator=g)
    reps = {"repeats": s.repeats}
    dense = fastest_dense(q, k, v, **reps)
    base = {"kind": "kernel", "family": family, "seq_len": length, "n_heads": H,
            "n_kv_heads": Hkv, "head_dim": D, "block_size": s.block_size, "select": s.select,
            "dense_backend": dense["best"], "dense_ms": dense["best_ms"],
            "dense_backends_ms": dense["backends"]}
    records = []
    n = n_blocks(length, s.block_size)
    full = build_plan(torch.zeros(1, Hkv, n, n, device=s.device),
                      torch.full((Hkv,), n), None, layer=0, block_size=s.block_size,
                      seq_len=length, prompt_blocks=n, group=H // Hkv)
    for backend in s.sparse_backends():
        impl = get_backend(backend)
        prepared = impl.prepare(full, H)  # once per plan, as a generation does
        t_full = time_fn(functools.partial(attend, q, k, v, plan=full, backend=impl,
                                           prepared=prepared), **reps)
        records.append({**base, "mode": f"{backend}_all_blocks", "backend": backend,
                        "ms": t_full["median_ms"], "speedup": dense["best_ms"] / t_full["median_ms"],
                        "keep_ratio": 1.0})
    del full
    t_exact = time_fn(lambda: block_mass(q, k, block_size=s.block_size), warmup=1,
                      repeats=max(1, s.repeats // 2))
    t_pooled = time_fn(lambda: block_mass(q, k, block_size=s.block_size, estimator="pooled"),
                       warmup=1, repeats=max(1, s.repeats // 2))
    t_twopass = None
    if q.is_cuda:
        from adaptive_dllm.kernels.block_mass import block_mass_triton

        t_twopass = time_fn(functools.partial(block_mass_triton, q, k, block_size=s.block_size,
                                              method="twopass"),
                            warmup=1, repeats=max(1, s.repeats // 2))["median_ms"]
    for mode in s.modes:
        sc = sparse_config(mode, cfg, s)

        def build(sc: Any = sc) -> Any:
            session = sc.new_session(cfg, s.steps, gen_length=s.gen_length)
            return session, session.build_plan(0, q, k, None)

        t_build = time_fn(build, warmup=1, repeats=max(1, s.repeats // 2))
        fused = _fused_build_ms(sc, cfg, q, k, v, s) if q.is_cuda else None
        session, plan = build()
        ratio = plan.keep_ratio()
        for backend in s.sparse_backends():
            impl = get_backend(backend)
            prepared = impl.prepare(plan, H)  # what a generation builds with the plan
            t = time_fn(functools.partial(attend, q, k, v, plan=plan, backend=impl,
                                          prepared=prepared), **reps)
            records.append({
                **base, "mode": mode, "backend": backend, "ms": t["median_ms"],
                "speedup": dense["best_ms"] / t["median_ms"], "keep_ratio": ratio,
                "ideal_speedup": 1.0 / ratio,
                "achieved_over_ideal": dense["best_ms"] / t["median_ms"] * ratio,
                "plan_build_ms": t_build["median_ms"], "scoring_exact_ms": t_exact["median_ms"],
                "scoring_pooled_ms": t_pooled["median_ms"], "scoring_twopass_ms": t_twopass,
                "fused_build_step_ms": fused,
                "plan_build_fused_ms": None if fused is None else fused - dense["best_ms"],
            })
        del session, plan
    return records


def _fused_build_ms(sc: Any, cfg: ModelConfig, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, s: SweepSettings) -> float:
    """Median ms of one layer's build step as a generation runs it (the fused kernel: attention
    that also scores, then the plan). Its excess over the fastest dense attention is the plan
    build's cost."""
    def step() -> Any:
        session = sc.new_session(cfg, s.steps, gen_length=s.gen_length)
        out = session.build_step(0, q, k, v, None)
        if session.build_kernel_used != "fused":
            raise RuntimeError(f"the build step ran {session.build_kernel_used!r}, not fused")
        return out

    return time_fn(step, warmup=1, repeats=max(1, s.repeats // 2))["median_ms"]


# -- driver -------------------------------------------------------------------------------------
def run_sweep(s: SweepSettings, *, what: Iterable[str] = ("kernel", "e2e"),
              emit: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Run the requested sweeps; ``emit`` receives every record as soon as it exists.

    Everything runs under ``torch.inference_mode()``, as generation does, so the kernels compiled
    for the kernel sweep are the ones generation reuses.
    """
    with torch.inference_mode():
        return _run_sweep(s, what=what, emit=emit)


def _run_sweep(s: SweepSettings, *, what: Iterable[str],
               emit: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    what = tuple(what)
    # Every record names what made it: versions, GPU, commit, UTC date and the command line.
    env = {**environment(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
           "command": s.command}
    records: list[dict[str, Any]] = []

    def add(rec: dict[str, Any]) -> None:
        rec = {**rec, "env": env}
        records.append(rec)
        emit(rec)

    dense_at: dict[tuple[str, int], tuple[str, float]] = {}
    for family in s.families:
        if "kernel" in what:
            for length in s.lengths:
                case = functools.partial(kernel_records, family, length, s)
                for rec in _guarded(case, family, length):
                    add(rec)
                    if rec["kind"] == "kernel":
                        dense_at[(family, length)] = (rec["dense_backend"], rec["dense_ms"])
                _free()
    if "decode" in what:
        copy_gbs = copy_rate_gbs(s.device, mib=8 if s.tiny else 1024)
        for family in s.families:
            for length in s.lengths:
                case = functools.partial(decode_records, family, length, s, copy_gbs=copy_gbs)
                for rec in _guarded(case, family, length):
                    add(rec)
                _free()
    if "e2e" in what and s.cache_sweep:
        _cache_sweep(s, add)
    elif "e2e" in what:
        top = max(s.e2e_lengths) + s.gen_length
        models = {}
        for family in s.families:
            config = model_config(family, n_layers=s.n_layers, max_seq_len=top, tiny=s.tiny)
            models[family] = random_model(config, device=s.device, dtype=getattr(torch, s.dtype))
            warm_len = min(2048, max(1, min(s.e2e_lengths) // 2 + 1))  # a length not measured
            warm = functools.partial(warmup_compile, models[family], s, length=warm_len)
            for rec in _guarded(lambda warm=warm: [warm()], family, 0):
                add(rec)
        last: dict[str, tuple[int, float]] = {}  # family -> (length, dense total s)
        for length in sorted(s.e2e_lengths):  # length-major: every family at each length
            for family in s.families:
                config = models[family].config
                backend, attn_ms = dense_at.get((family, length + s.gen_length),
                                                dense_at.get((family, length), (None, None)))
                if attn_ms is None and "kernel" not in what and s.device == "cuda":
                    backend, attn_ms = _dense_attention(config, length + s.gen_length, s)
                estimate = None
                if family in last:  # between linear and quadratic growth
                    prev_len, prev_s = last[family]
                    estimate = prev_s * (length / prev_len) ** 1.6
                case = functools.partial(e2e_records, models[family], length, s,
                                         dense_backend=backend, attn_ms_per_layer=attn_ms,
                                         estimate_s=estimate)
                for rec in _guarded(case, family, length):
                    add(rec)
                    if rec.get("mode") == "dense" and rec["kind"] == "e2e":
                        last[family] = (length, rec["total_s"])
                _free()
        models.clear()
        _free()
    return records


def _cache_sweep(s: SweepSettings, add: Callable[[dict[str, Any]], None]) -> None:
    """End-to-end runs under the cache protocol, family-major (one model in memory at a time)."""
    top = max(s.e2e_lengths) + s.gen_length
    for family in s.families:
        config = model_config(family, n_layers=s.n_layers, max_seq_len=top, tiny=s.tiny)
        model = random_model(config, device=s.device, dtype=getattr(torch, s.dtype))
        for length in sorted(s.e2e_lengths):
            case = functools.partial(cache_e2e_records, model, length, s)
            for rec in _guarded(case, family, length):
                add(rec)
            _free()
        del model
        _free()


def _dense_attention(config: ModelConfig, length: int, s: SweepSettings) -> tuple[str, float]:
    dtype = getattr(torch, s.dtype)
    q = torch.randn(1, config.n_heads, length, config.head_dim, device=s.device, dtype=dtype)
    k = torch.randn(1, config.n_kv_heads, length, config.head_dim, device=s.device, dtype=dtype)
    d = fastest_dense(q, k, k, repeats=3)
    return d["best"], d["best_ms"]


def _guarded(fn: Callable[[], list[dict[str, Any]]], family: str,
             length: int) -> list[dict[str, Any]]:
    """Run one case; a failure (out of memory, a kernel that does not build) becomes an error
    record instead of ending the sweep."""
    try:
        return fn()
    except Exception as err:  # reported in the record, the sweep goes on
        _free()
        return [{"kind": "error", "family": family, "seq_len": length,
                 "error": f"{type(err).__name__}: " + str(err).splitlines()[0][:200]}]


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
