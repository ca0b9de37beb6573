"""Issue 14 timings: K/V cache x sparse attention end to end, and the cached-step kernel.

Needs a CUDA GPU (not run yet: written in a CPU-only session). Random bf16 weights at the
LLaDA-8B / Dream-7B geometry with 4 layers (valid for timing, benchmarks/README.md); confidences
of random weights are meaningless, so parallel decoding is timed with a fixed tokens-per-step
(``steps = gen_length / tps``) and reported as such.

    PYTHONPATH=src python benchmarks/cache_bench.py --out benchmarks/results/cache_h200.jsonl
    PYTHONPATH=src python benchmarks/cache_bench.py --what kernel --lengths 65536

``e2e`` records: per family and prompt length, generation time (median of repeats, after a warm
run), peak memory and stats for: no cache dense, prefix dense, prefix sparse, dual dense, dual
sparse (sparse = uniform select 0.3, skip 0.2, backend auto), each with tokens per step 1 and 4.
``kernel`` records: the cached-step attention (W queries over Lk keys, keep 0.3) by
``kernels/decode_sparse`` vs the fastest dense SDPA on the same shapes, with achieved GB/s of K/V
read and the device's measured copy rate. Every record carries commit, device, versions, command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

import adaptive_dllm as ad
from adaptive_dllm.bench.sweep import model_config, random_model
from adaptive_dllm.kernels.decode_sparse import decode_sparse
from adaptive_dllm.sparsity import SparseConfig


def _meta() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    import triton

    return {"commit": commit, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "command": " ".join(["python"] + sys.argv)}


def _time(fn, repeats: int) -> float:  # noqa: ANN001
    """Median milliseconds of ``fn()`` over ``repeats`` CUDA-event-timed calls (one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_rate_gbs() -> float:
    """Measured device copy rate (read + write bytes per second), the bandwidth reference."""
    x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = _time(lambda: y.copy_(x), 10)
    return 2 * x.numel() / ms / 1e6


def kernel_records(family: str, lengths: list[int], keep: float, window: int,
                   repeats: int) -> list[dict]:
    cfg = model_config(family, n_layers=1, max_seq_len=max(lengths))
    H, Hkv, D, bs = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, 128
    out = []
    for Lk in lengths:
        q = torch.randn(1, H, window, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
                for _ in range(2))
        n = -(-Lk // bs)
        kept = max(1, round(keep * n))
        idx = torch.stack([torch.randperm(n, device="cuda")[:kept].sort().values
                           for _ in range(Hkv)])[None].int()
        cnt = torch.full((1, Hkv), kept, dtype=torch.int32, device="cuda")
        args = (q, k, v)
        sparse_ms = _time(lambda a=args, i=idx, c=cnt: decode_sparse(*a, i, c, block_size=bs),
                          repeats)
        dense_ms = _time(lambda a=args: F.scaled_dot_product_attention(*a, enable_gqa=H != Hkv),
                         repeats)
        read = 2 * Hkv * kept * bs * D * 2  # kept K and V blocks, bf16
        out.append({"kind": "cached_step_kernel", "family": family, "keys": Lk,
                    "queries": window, "keep": kept / n, "sparse_ms": sparse_ms,
                    "dense_sdpa_ms": dense_ms, "speedup": dense_ms / sparse_ms,
                    "ideal": 1 / (kept / n), "gbs": read / sparse_ms / 1e6})
    return out


def e2e_records(family: str, lengths: list[int], gen: int, block: int, repeats: int) -> list[dict]:
    cfg = model_config(family, n_layers=4, max_seq_len=max(lengths) + gen)
    model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
    sparse = SparseConfig(select=0.3, skip=0.2, block_size=128)
    out = []
    for P in lengths:
        ids = torch.randint(0, cfg.vocab_size - 1000, (1, P), device="cuda")
        for cache in (None, "prefix", "dual"):
            for attention in ("dense", "sparse"):
                for tps in (1, 4):
                    opts = {"gen_length": gen, "block_length": block, "steps": gen // tps,
                            "cache": cache, "sparse": sparse if attention == "sparse" else None}
                    ad.generate(model, None, ids, **opts)  # warm: compiles, cuDNN plans
                    torch.cuda.reset_peak_memory_stats()
                    runs = [ad.generate(model, None, ids, **opts) for _ in range(repeats)]
                    s = runs[-1].stats
                    sp = s["sparse"] or {}
                    out.append({"kind": "e2e", "family": family, "prompt": P, "gen": gen,
                                "block": block, "cache": cache, "attention": attention,
                                "tokens_per_step": tps, "layers": 4,
                                "total_s": statistics.median(r.stats["total_s"] for r in runs),
                                "forwards": s["forwards"], "refreshes": s["refreshes"],
                                "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                                "backend": sp.get("backend"),
                                "keep_refresh": sp.get("realized_keep_ratio"),
                                "keep_cached": sp.get("cached_keep_ratio")})
                    sys.stderr.write(json.dumps(out[-1]) + "\n")
        del ids
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", nargs="+", choices=("kernel", "e2e"), default=["kernel", "e2e"])
    p.add_argument("--family", nargs="+", choices=("llada", "dream"), default=["llada", "dream"])
    p.add_argument("--lengths", nargs="+", type=int, default=[4096, 16384, 65536])
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--window", type=int, default=32, help="cached-step queries (kernel)")
    p.add_argument("--keep", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="append JSONL records here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cache_bench: needs a CUDA GPU")
    meta = {**_meta(), "copy_rate_gbs": copy_rate_gbs()}
    records = []
    for family in args.family:
        if "kernel" in args.what:
            records += kernel_records(family, args.lengths, args.keep, args.window, 20)
        if "e2e" in args.what:
            records += e2e_records(family, args.lengths, args.gen_length, args.block_length,
                                   args.repeats)
    lines = [json.dumps({**meta, **r}) for r in records]
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
