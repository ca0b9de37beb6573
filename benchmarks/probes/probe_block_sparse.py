# The triton block-sparse kernel against compiled flex on the same plans, one layer at 64k tokens
# (LLaDA-8B and Dream-7B head geometry, random bf16 q/k/v, uniform and adaptive plans at select
# 0.3), for TMA or pointer loads and several launch options of the triton kernel.
#     OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_block_sparse.py
import json, os
import torch
from adaptive_dllm.attention import block_sparse
from adaptive_dllm.attention.api import attend
from adaptive_dllm.bench.sweep import SweepSettings, model_config, sparse_config
from adaptive_dllm.bench.timing import fastest_dense, time_fn

L = 65536
s = SweepSettings()
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
variants = [(True, 8, 3), (True, 8, 2), (False, 8, 3), (False, 8, 2)]
for family in ("llada", "dream"):
    cfg = model_config(family, n_layers=1, max_seq_len=L)
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator(device="cuda").manual_seed(L)
    q = torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    rec = {"dense_ms": fastest_dense(q, k, v, repeats=3)["best_ms"]}
    for mode in ("uniform", "adaptive"):
        sc = sparse_config(mode, cfg, s, backend="flex")
        plan = sc.new_session(cfg, 128, gen_length=128).build_plan(0, q, k, None)
        ref = attend(q, k, v, plan=plan, backend="flex")
        r = {"flex": time_fn(lambda: attend(q, k, v, plan=plan, backend="flex"), repeats=5)["median_ms"]}
        for tma, w, st in variants:
            block_sparse.USE_TMA = tma
            block_sparse.KERNEL_OPTIONS[128] = {"num_warps": w, "num_stages": st}
            name = f"triton_{'tma' if tma else 'ptr'}_w{w}_s{st}"
            try:
                o = attend(q, k, v, plan=plan, backend="triton")
                r[name] = time_fn(lambda: attend(q, k, v, plan=plan, backend="triton"), repeats=5)["median_ms"]
                r["err_" + name] = float((o.float() - ref.float()).abs().max())
            except Exception as e:  # noqa: BLE001
                r[name] = repr(e)[:200]
        r["flex_again"] = time_fn(lambda: attend(q, k, v, plan=plan, backend="flex"), repeats=5)["median_ms"]
        block_sparse.KERNEL_OPTIONS[128] = {"num_warps": 8, "num_stages": 3}
        block_sparse.USE_TMA = None
        rec[mode] = r
        print(family, mode, rec["dense_ms"], r, flush=True)
    out[family] = rec
    del q, k, v
    torch.cuda.empty_cache()
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "probe_block_sparse.json"), "w"), indent=1)
