# Reproduces the FX-graph-cache bug (torch 2.11.0+cu130, H100, 2026-11-27): after flex was
# compiled for one block size, an MHA call with another block size got the first graph.
#     for v in default nofxcache; do TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$v \
#         PYTHONPATH=src python benchmarks/probes/probe_cache.py $v; done
# default: max error 1.42 / 1.51 / 1.42 on the block-64 and block-32 MHA calls after the first
# compile; nofxcache: 0.004 everywhere. The library now compiles with fx_graph_cache=False, so
# "default" no longer reproduces it unless flex.py's option is removed.
import sys, os, torch
sys.path.insert(0, "tests/attention")
sys.path.insert(0, "tests")
variant = sys.argv[1]
import torch._inductor.config as ic
if variant == "nofxcache":
    ic.fx_graph_cache = False
if variant == "nocaches":
    ic.force_disable_caches = True
from test_flex import _inputs, _plan, _max_err
from adaptive_dllm.attention.api import attend
from adaptive_dllm.attention.reference import reference_attention
def run(H, Hkv, L, bs, D=64, seed=0):
    q, k, v = _inputs(1, H, Hkv, L, D, device="cuda", dtype=torch.bfloat16, seed=seed)
    plan = _plan(q, k, bs)
    out = attend(q, k, v, plan=plan, backend="flex")
    ref = reference_attention(q.float(), k.float(), v.float(), plan=plan)
    return round(_max_err(out, ref), 3)
seq = [(4, 4, 128, 32), (4, 4, 256, 64), (4, 4, 512, 128), (8, 8, 256, 64), (8, 8, 512, 32), (8, 2, 256, 64), (4, 4, 1024, 64)]
print(variant, [(s, run(*s)) for s in seq], flush=True)
