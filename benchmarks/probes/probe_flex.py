# Does flex kernel time depend on the data? Same plan shape, plans built from the q/k they run
# on vs from other random q/k. One H100 80GB HBM3, torch 2.11.0+cu130, 2026-11-27:
#     OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_flex.py
# Result (ms): model plan + model q/k 48.2, random plan + model q/k 56.5, random + random 48.2.
import json, os
import torch
from adaptive_dllm.bench.sweep import SweepSettings, model_config, random_model, sparse_config
from adaptive_dllm.bench.timing import sdpa_backend, time_fn

out = {}
L = 65536 + 128
cfg = model_config("llada", n_layers=1, max_seq_len=L)
model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
ids = torch.randint(0, 126000, (1, L), device="cuda")
s = SweepSettings()
session = sparse_config("uniform", cfg, s).new_session(cfg, 128, gen_length=128)
cap = {}
def spy(layer, q, k, v, km):
    cap["qkv"] = (q, k, v)
    return session(layer, q, k, v, km)
with torch.no_grad(), sdpa_backend("cudnn"):
    session.begin_step(25, 128); model(ids, attn=spy, logits_from=L - 128)
    session.begin_step(26, 128); model(ids, attn=spy, logits_from=L - 128)
qm, km_, vm = cap["qkv"]
pm = session._plans[0]
out["model_qkv"] = [list(t.shape) + list(t.stride()) for t in (qm, km_, vm)]
out["q_std"] = float(qm.float().std()); out["k_std"] = float(km_.float().std())
g = torch.Generator(device="cuda").manual_seed(0)
qr, kr, vr = (torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
ks = sparse_config("uniform", cfg, s).new_session(cfg, 128, gen_length=128)
pr = ks.build_plan(0, qr, kr, None)
def t(plan, q, k, v):
    return time_fn(lambda: session.run(plan, q, k, v, None), warmup=2, repeats=5)["median_ms"]
out["model_plan_model_qkv"] = t(pm, qm, km_, vm)
out["model_plan_model_qkv_vcontig"] = t(pm, qm, km_, vm.contiguous())
out["model_plan_random_qkv"] = t(pm, qr, kr, vr)
out["random_plan_model_qkv"] = t(pr, qm, km_, vm)
out["random_plan_random_qkv"] = t(pr, qr, kr, vr)
out["model_qkv_scaled_random_plan"] = t(pr, qm * 50, km_ * 50, vm)
for name, p in (("model", pm), ("random", pr)):
    idx = p.indices
    out[f"{name}_plan"] = {"shape": list(idx.shape), "keep": p.keep_ratio(),
                           "counts_min_max": [int(p.counts.min()), int(p.counts.max())] if hasattr(p, "counts") else None}
print(json.dumps(out, indent=1))
json.dump(out, open(os.environ["OUT"] + "/probe_flex.json", "w"), indent=1)
