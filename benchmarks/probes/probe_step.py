# Where a 64k LLaDA step (4 layers, random bf16 weights) spends its time, and flex options.
# Run on one H100 80GB HBM3 (torch 2.11.0+cu130, Triton 3.6.0), 2026-11-27, from the repo root:
#     OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_step.py
# Prints dense/sparse step times with the fused element-wise kernels and without (one process,
# CUDA events, median of 3), writes torch.profiler tables to $OUT/prof_{dense,sparse}.txt, and
# times flex kernel options and V layouts at 64k. Results: benchmarks/README.md ("Where a 64k step
# went", "Kernel options tried"). The eager-only profile in that README came from this script's
# first version, before models/fused.py existed (same profiler code).
import json, sys, time, functools, os
import torch
from adaptive_dllm.attention import flex
from adaptive_dllm.bench.sweep import SweepSettings, model_config, random_model, sparse_config
from adaptive_dllm.bench.timing import sdpa_backend, time_fn
from adaptive_dllm.models.transformer import apply_rotary, rotary_tables

out = {}
L = 65536 + 128
cfg = model_config("llada", n_layers=4, max_seq_len=L)
model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
ids = torch.randint(0, 126000, (1, L), device="cuda")
s = SweepSettings()
session = sparse_config("uniform", cfg, s).new_session(cfg, 128, gen_length=128)
lf = L - 128

def fwd(hook=None):
    with torch.no_grad():
        return model(ids, attn=hook, logits_from=lf)

with sdpa_backend("cudnn"):
    session.begin_step(25, 128); fwd(session)  # build
    session.begin_step(26, 128); fwd(session)  # sparse (compile)
    t_dense = time_fn(fwd, warmup=1, repeats=3)["median_ms"]
    def sp():
        session.begin_step(27, 128); return fwd(session)
    t_sparse = time_fn(sp, warmup=1, repeats=3)["median_ms"]
out["dense_ms"] = t_dense; out["sparse_ms"] = t_sparse
print("fused: dense", t_dense, "sparse", t_sparse, flush=True)
from adaptive_dllm.models.transformer import fused_kernels
with sdpa_backend("cudnn"), fused_kernels(False):
    out["eager_dense_ms"] = time_fn(fwd, warmup=1, repeats=3)["median_ms"]
    out["eager_sparse_ms"] = time_fn(sp, warmup=1, repeats=3)["median_ms"]
print("eager:", out["eager_dense_ms"], out["eager_sparse_ms"], flush=True)

from torch.profiler import profile, ProfilerActivity
def prof(fn, name):
    with sdpa_backend("cudnn"):
        fn(); torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            fn(); torch.cuda.synchronize()
    for key in ("self_cuda_time_total", "self_device_time_total"):
        try:
            tab = p.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
            break
        except Exception as e:
            tab = repr(e)
    print(f"==== {name}\n{tab}", flush=True)
    open(os.environ["OUT"] + f"/prof_{name}.txt", "w").write(tab)
prof(fwd, "dense")
prof(sp, "sparse")

# rotary cost, q-shaped
x = torch.randn(1, L, 32, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
rope = rotary_tables(torch.arange(L, device="cuda")[None], 128, 500000.0)
out["rotary_q_ms"] = time_fn(lambda: apply_rotary(x, *rope))["median_ms"]
print("rotary q", out["rotary_q_ms"], flush=True)

# flex kernel options at 64k, uniform plan
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k = torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
v = torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
ks = sparse_config("uniform", model_config("llada", n_layers=1, max_seq_len=L), s).new_session(
    model_config("llada", n_layers=1, max_seq_len=L), 128, gen_length=128)
plan = ks.build_plan(0, q, k, None)
ref = ks.run(plan, q, k, v, None).float()
v_strided = v.transpose(1, 2).contiguous().transpose(1, 2)
out["flex_v_contig_ms"] = time_fn(lambda: ks.run(plan, q, k, v, None))["median_ms"]
out["flex_v_strided_ms"] = time_fn(lambda: ks.run(plan, q, k, v_strided, None))["median_ms"]
qs, ksd = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
out["flex_all_strided_ms"] = time_fn(lambda: ks.run(plan, qs, ksd, v_strided, None))["median_ms"]
print("flex v contiguous / v strided / all strided", out["flex_v_contig_ms"], out["flex_v_strided_ms"], out["flex_all_strided_ms"], flush=True)
base = dict(flex.KERNEL_OPTIONS[128])
variants = [base, {**base, "ROWS_GUARANTEED_SAFE": True}, {**base, "PRESCALE_QK": True},
            {**base, "num_stages": 3}, {**base, "ROWS_GUARANTEED_SAFE": True, "num_stages": 3},
            {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "USE_TMA": True,
             "ROWS_GUARANTEED_SAFE": True},
            {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2, "USE_TMA": True}]
rows = []
for opts in variants:
    flex.KERNEL_OPTIONS[128] = opts
    try:
        t = time_fn(lambda: ks.run(plan, q, k, v, None), warmup=2, repeats=5)["median_ms"]
        err = float((ks.run(plan, q, k, v, None).float() - ref).abs().max())
        rows.append({"opts": opts, "ms": t, "err": err})
    except Exception as e:
        rows.append({"opts": opts, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    print(rows[-1], flush=True)
flex.KERNEL_OPTIONS[128] = base
out["variants"] = rows
json.dump(out, open(os.environ["OUT"] + "/probe.json", "w"), indent=1)
