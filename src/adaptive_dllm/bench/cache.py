"""Issue 14 benchmarks: generation under an approximate K/V cache, and the cached-step kernel.

Shape legend (cached-step attention): H query heads, Hkv KV heads, W queries of the cached
step's window, Lk cached keys, D head dim, bs key block size, Nk = ceil(Lk / bs).

- :func:`cache_e2e_records`: per (family, prompt length), generation with ``cache`` none /
  prefix / dual, dense and every sparse mode on every requested sparse backend (``auto``
  included: its decisions are in the record). The baseline is dense **without** a cache (today's
  run); each record carries the speedup and peak memory relative to it and to dense with the
  same cache. Random weights make confidences meaningless, so parallel decoding is timed with a
  **fixed** count: ``tokens_per_step = K`` runs ``steps = gen_length / K``, which commits exactly
  K tokens per forward inside every block (``decoding: "fixed"``); ``threshold`` runs are
  recorded as ``decoding: "threshold"`` and their tokens per forward say what happened.
- :func:`decode_records`: the cached-step attention alone, W queries over Lk keys with ``select``
  of the key blocks kept per KV head: the ``decode_sparse`` Triton kernel (its eager oracle on
  the CPU, labelled ``reference``) vs the fastest dense SDPA on the same shapes, with the bytes
  each reads and GB/s against the measured device copy rate (:func:`copy_rate_gbs`).

Every generation runs once untimed first (kernels compiled, cuDNN plans made); a no-cache dense
run warms up with one step per block plus one (the same shapes, far fewer forwards).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from adaptive_dllm.bench.settings import SweepSettings, model_config, sparse_config
from adaptive_dllm.bench.timing import fastest_dense, time_fn
from adaptive_dllm.kernels.support import n_blocks

#: What the record says about fixed-count decoding (random weights).
FIXED_NOTE = ("random weights: the step schedule commits exactly tokens_per_step tokens per "
              "forward in every block (steps = gen_length / tokens_per_step), not confidences")


def decoding_steps(s: SweepSettings) -> int | None:
    """``steps`` of a cache-sweep generation: gen_length / K with a fixed K, None (unset) under a
    threshold, else the settings' steps."""
    if s.threshold is not None:
        return None
    if s.tokens_per_step is not None:
        return s.gen_length // s.tokens_per_step
    return s.steps


def _run(model: Any, ids: torch.Tensor, s: SweepSettings, *, cache: str | None,
         sparse: Any = None, steps: int | None = None, timed: bool = True) -> dict[str, Any]:
    from adaptive_dllm.generation.api import generate

    opts: dict[str, Any] = {"gen_length": s.gen_length, "block_length": s.llada_block_length,
                            "cache": cache, "cuda_graphs": s.cuda_graphs}
    if s.threshold is not None and steps is None:
        opts["threshold"] = s.threshold
    else:
        opts["steps"] = steps or decoding_steps(s)
    if s.device == "cuda" and timed:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = generate(model, None, ids, sparse=sparse, **opts)
    stats = out.stats.to_dict()
    stats.pop("step_s", None)
    if s.device == "cuda" and timed:
        torch.cuda.synchronize()
        stats["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return stats


def cache_e2e_records(model: Any, length: int, s: SweepSettings) -> list[dict[str, Any]]:
    """Generation at a ``length``-token prompt for every cache mode of ``s.caches`` (``none``:
    dense only, the baseline), dense and each sparse mode x backend."""
    config = model.config
    g = torch.Generator(device=s.device).manual_seed(length)
    ids = torch.randint(0, min(config.vocab_size, config.mask_id), (1, length), device=s.device,
                        generator=g)
    fixed = s.threshold is None
    base = {"kind": "e2e", "family": config.family, "prompt_len": length,
            "seq_len": length + s.gen_length, "n_layers": config.n_layers,
            "gen_length": s.gen_length, "block_length": s.llada_block_length,
            "select": s.select, "skip": s.skip, "block_size": s.block_size,
            "decoding": "fixed" if fixed else "threshold",
            "tokens_per_step": (s.tokens_per_step or s.gen_length // s.steps) if fixed else None,
            "threshold": s.threshold, "cuda_graphs": s.cuda_graphs, "decoding_note": FIXED_NOTE if fixed else
            "random weights: confidences are meaningless; tokens_per_forward says what ran",
            "device": _device_name(s), "command": s.command}
    records: list[dict[str, Any]] = []
    reference: dict[str | None, dict[str, Any]] = {}  # cache -> its dense record
    for cache_name in s.caches:
        cache = None if cache_name == "none" else cache_name
        runs: list[tuple[str, str | None, Any]] = [("dense", None, None)]
        if cache is not None:
            runs += [(mode, backend, sparse_config(mode, config, s, backend=backend))
                     for mode in s.modes for backend in s.cache_backends]
        for mode, backend, sparse in runs:
            if s.deadline is not None and time.monotonic() > s.deadline:
                records.append({**base, "kind": "skipped", "cache": cache, "mode": mode,
                                "reason": "deadline"})
                continue
            # No cache: 2 steps per block warm the shapes at a fraction of the run's cost.
            warm = 2 * (s.gen_length // s.llada_block_length) if cache is None and fixed else None
            _run(model, ids, s, cache=cache, sparse=sparse, timed=False, steps=warm)
            timed = [_run(model, ids, s, cache=cache, sparse=sparse)
                     for _ in range(s.e2e_repeats)]
            rec = {**base, "cache": cache, "mode": mode, "sparse_backend": backend,
                   **_fields(_median_run(timed)),
                   "total_s_samples": [t["total_s"] for t in timed]}
            if mode == "dense":
                reference[cache] = rec
            _compare(rec, reference.get(None), "no_cache_dense")
            _compare(rec, reference.get(cache), "same_cache_dense")
            rec["speedup"] = rec.get("speedup_over_no_cache_dense")
            records.append(rec)
    return records


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median ``total_s`` (the lower of the two middle ones for an even count): one
    whole run's stats, so its fields stay consistent; peak memory is the largest of all runs."""
    ordered = sorted(runs, key=lambda r: r["total_s"])
    pick = dict(ordered[(len(ordered) - 1) // 2])
    peaks = [r["peak_memory_gb"] for r in runs if r.get("peak_memory_gb") is not None]
    if peaks:
        pick["peak_memory_gb"] = max(peaks)
    return pick


def _fields(st: dict[str, Any]) -> dict[str, Any]:
    sp = st.get("sparse")
    return {"total_s": st["total_s"], "step_median_s": st["step_median_s"],
            "tokens_per_s": st["tokens_per_s"], "steps": st["steps"], "forwards": st["forwards"],
            "refreshes": st["refreshes"], "graph_replays": st["graph_replays"],
            "tokens_per_forward": st["tokens_per_forward"],
            "peak_memory_gb": st.get("peak_memory_gb"), "sparse_stats": sp}


def _compare(rec: dict[str, Any], ref: dict[str, Any] | None, name: str) -> None:
    """Speedup and peak-memory ratio of ``rec`` over ``ref`` (absent when ``ref`` is)."""
    if ref is None or ref is rec:
        return
    rec[f"speedup_over_{name}"] = ref["total_s"] / rec["total_s"]
    if rec["peak_memory_gb"] and ref["peak_memory_gb"]:
        rec[f"peak_over_{name}"] = rec["peak_memory_gb"] / ref["peak_memory_gb"]


# -- the cached-step kernel -----------------------------------------------------------------------
def copy_rate_gbs(device: str, *, mib: int = 1024) -> float:
    """Measured device copy rate, GB/s of bytes moved (read + write): the bandwidth reference."""
    x = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms = time_fn(lambda: y.copy_(x), warmup=2, repeats=10, device=device)["median_ms"]
    return 2 * x.numel() / ms / 1e6


def decode_records(family: str, keys: int, s: SweepSettings, *,
                   copy_gbs: float) -> list[dict[str, Any]]:
    """The cached-step attention at ``keys`` cached keys: sparse (``select`` of each KV head's
    key blocks) vs the fastest dense SDPA on the same q/k/v."""
    from adaptive_dllm.kernels import decode_sparse as ds

    dtype = getattr(torch, s.dtype)
    cfg = model_config(family, n_layers=1, max_seq_len=keys, tiny=s.tiny)
    H, Hkv, D, bs, W = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, s.block_size, s.window
    g = torch.Generator(device=s.device).manual_seed(keys)
    q = torch.randn(1, H, W, D, device=s.device, dtype=dtype, generator=g)
    k = torch.randn(1, Hkv, keys, D, device=s.device, dtype=dtype, generator=g)
    v = torch.randn(1, Hkv, keys, D, device=s.device, dtype=dtype, generator=g)
    n = n_blocks(keys, bs)
    kept = max(1, round(s.select * n))
    scores = torch.rand(Hkv, n, device=s.device, generator=g)
    idx = scores.topk(kept, dim=-1).indices.sort(dim=-1).values[None].to(torch.int32)
    cnt = torch.full((1, Hkv), kept, dtype=torch.int32, device=s.device)
    kernel = "triton" if s.device == "cuda" else "reference"
    fn = ds.decode_sparse if kernel == "triton" else ds.decode_reference
    # GPU time (launches overlapped, L2 flushed) is the kernel's cost inside a model, whose
    # other layers keep the GPU busy while the host launches; one isolated call (call_ms) adds
    # the host-side launch path, which dominates at a few dozen microseconds.
    sparse_ms = time_fn(lambda: fn(q, k, v, idx, cnt, block_size=bs), repeats=s.repeats,
                        gpu_time=True, device=s.device)["median_ms"]
    call_ms = time_fn(lambda: fn(q, k, v, idx, cnt, block_size=bs), repeats=s.repeats,
                      device=s.device)["median_ms"]
    dense = fastest_dense(q, k, v, repeats=s.repeats, gpu_time=True)
    dense_call = fastest_dense(q, k, v, repeats=s.repeats)
    item = k.element_size()
    dense_bytes = 2 * Hkv * keys * D * item + 2 * q.numel() * item
    sparse_bytes = 2 * Hkv * min(kept * bs, keys) * D * item + 2 * q.numel() * item
    sparse_gbs = sparse_bytes / sparse_ms / 1e6
    dense_gbs = dense_bytes / dense["best_ms"] / 1e6
    return [{"kind": "decode", "family": family, "mode": "cached_step", "seq_len": keys,
             "keys": keys, "queries": W,
             "n_heads": H, "n_kv_heads": Hkv, "head_dim": D, "block_size": bs,
             "keep_ratio": kept / n, "kernel": kernel,
             "timing": "gpu_time" if s.device.startswith("cuda") else "wall", "ms": sparse_ms,
             "dense_backend": dense["best"], "dense_ms": dense["best_ms"],
             "dense_backends_ms": dense["backends"], "speedup": dense["best_ms"] / sparse_ms,
             "call_ms": call_ms, "dense_call_ms": dense_call["best_ms"],
             "call_speedup": dense_call["best_ms"] / call_ms,
             "ideal_speedup": n / kept, "bytes_read": sparse_bytes, "dense_bytes_read": dense_bytes,
             "gbs": sparse_gbs, "dense_gbs": dense_gbs, "copy_rate_gbs": copy_gbs,
             "gbs_over_copy": sparse_gbs / copy_gbs, "dense_gbs_over_copy": dense_gbs / copy_gbs,
             "device": _device_name(s), "command": s.command}]


def _device_name(s: SweepSettings) -> str:
    if s.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(s.device))
    return f"cpu ({torch.get_num_threads()} threads)"
