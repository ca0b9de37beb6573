"""Where a 64k LLaDA step (4 layers, random bf16 weights) spends its time, and flex options.
Run on one H100 80GB HBM3 (torch 2.11.0+cu130, Triton 3.6.0), 2026-11-27, from the repo root:
    OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_step.py
Prints dense/sparse step times with the fused element-wise kernels and without (one process,
CUDA events, median of 3), writes torch.profiler tables to $OUT/prof_{dense,sparse}.txt, and
times flex kernel options and V layouts at 64k. Results: benchmarks/README.md ("Where a 64k step
went", "Kernel options tried"). The eager-only profile in that README came from this script's
first version, before models/fused.py existed (same profiler code).

Flex tile variants are FlexBackend objects with their own FlexOptions (nothing global is
changed). Needs a CUDA GPU.
"""
import argparse
import json
import os

import torch

from adaptive_dllm.attention.api import attend
from adaptive_dllm.attention.flex import FLEX_TILES, FlexBackend, FlexOptions
from adaptive_dllm.bench.settings import SweepSettings, model_config, random_model, sparse_config
from adaptive_dllm.bench.timing import sdpa_backend, time_fn
from adaptive_dllm.models.transformer import apply_rotary, fused_kernels, rotary_tables


def step_times(out: dict, L: int) -> None:
    """Dense and sparse 4-layer step times, fused element-wise kernels on and off, profiles."""
    cfg = model_config("llada", n_layers=4, max_seq_len=L)
    model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 126000, (1, L), device="cuda")
    session = sparse_config("uniform", cfg, SweepSettings()).new_session(cfg, 128, gen_length=128)

    def fwd(hook=None):
        with torch.no_grad():
            return model(ids, attn=hook, logits_from=L - 128)

    def sp():
        session.begin_step(27, 128)
        return fwd(session)

    with sdpa_backend("cudnn"):
        session.begin_step(25, 128)
        fwd(session)  # build
        session.begin_step(26, 128)
        fwd(session)  # sparse (compile)
        out["dense_ms"] = time_fn(fwd, warmup=1, repeats=3)["median_ms"]
        out["sparse_ms"] = time_fn(sp, warmup=1, repeats=3)["median_ms"]
        with fused_kernels(False):
            out["eager_dense_ms"] = time_fn(fwd, warmup=1, repeats=3)["median_ms"]
            out["eager_sparse_ms"] = time_fn(sp, warmup=1, repeats=3)["median_ms"]
    print("fused:", out["dense_ms"], out["sparse_ms"], "eager:", out["eager_dense_ms"],
          out["eager_sparse_ms"], flush=True)
    profile_step(fwd, "dense")
    profile_step(sp, "sparse")


def profile_step(fn, name: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    with sdpa_backend("cudnn"):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            fn()
            torch.cuda.synchronize()
    tab = p.key_averages().table(sort_by="self_device_time_total", row_limit=25,
                                 max_name_column_width=70)
    print(f"==== {name}\n{tab}", flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), f"prof_{name}.txt"), "w") as f:
        f.write(tab)


def flex_variants(out: dict, L: int) -> None:
    """V layouts and flex tile options at 64k on one uniform plan."""
    x = torch.randn(1, L, 32, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    rope = rotary_tables(torch.arange(L, device="cuda")[None], 128, 500000.0)
    out["rotary_q_ms"] = time_fn(lambda: apply_rotary(x, *rope))["median_ms"]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    cfg = model_config("llada", n_layers=1, max_seq_len=L)
    plan = sparse_config("uniform", cfg, SweepSettings()).new_session(
        cfg, 128, gen_length=128).build_plan(0, q, k, None)
    flex = FlexBackend()
    ref = attend(q, k, v, plan=plan, backend=flex).float()
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    out["flex_v_contig_ms"] = time_fn(lambda: attend(q, k, v, plan=plan, backend=flex))["median_ms"]
    out["flex_v_strided_ms"] = time_fn(lambda: attend(q, k, strided[2], plan=plan, backend=flex))["median_ms"]
    out["flex_all_strided_ms"] = time_fn(lambda: attend(*strided, plan=plan, backend=flex))["median_ms"]
    base = dict(FLEX_TILES[128])
    variants = [base, {**base, "ROWS_GUARANTEED_SAFE": True}, {**base, "PRESCALE_QK": True},
                {**base, "num_stages": 3}, {**base, "ROWS_GUARANTEED_SAFE": True, "num_stages": 3},
                {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "USE_TMA": True,
                 "ROWS_GUARANTEED_SAFE": True},
                {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2, "USE_TMA": True}]
    rows = []
    for opts in variants:
        backend = FlexBackend(FlexOptions(tiles={**FLEX_TILES, 128: opts}))
        try:
            t = time_fn(lambda b=backend: attend(q, k, v, plan=plan, backend=b), warmup=2, repeats=5)
            err = float((attend(q, k, v, plan=plan, backend=backend).float() - ref).abs().max())
            rows.append({"opts": opts, "ms": t["median_ms"], "err": err})
        except Exception as e:  # noqa: BLE001  (a variant that does not compile is a result)
            rows.append({"opts": opts, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(rows[-1], flush=True)
    out["variants"] = rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=65536 + 128, help="tokens (default 65664)")
    args = p.parse_args(argv)
    out: dict = {}
    step_times(out, args.length)
    flex_variants(out, args.length)
    with open(os.path.join(os.environ.get("OUT", "."), "probe.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
