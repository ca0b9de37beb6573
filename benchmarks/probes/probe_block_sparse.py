"""The triton block-sparse kernel against compiled flex on the same plans, one layer at 64k tokens
(LLaDA-8B and Dream-7B head geometry, random bf16 q/k/v, uniform and adaptive plans at select
0.3), for TMA or pointer loads and several launch options of the triton kernel.

    OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_block_sparse.py

Every variant is a TritonBackend constructed with its own TritonOptions (nothing global is
changed). Needs a CUDA GPU.
"""
import argparse
import json
import os

import torch

from adaptive_dllm.attention.api import attend
from adaptive_dllm.attention.flex import FlexBackend
from adaptive_dllm.attention.triton import TritonBackend, TritonOptions
from adaptive_dllm.bench.settings import SweepSettings, model_config, sparse_config
from adaptive_dllm.bench.timing import fastest_dense, time_fn
from adaptive_dllm.kernels.support import BLOCK_SPARSE_LAUNCH, LaunchOptions

VARIANTS = [(True, 8, 3), (True, 8, 2), (False, 8, 3), (False, 8, 2)]  # (TMA, warps, stages)


def triton_variant(tma: bool, warps: int, stages: int) -> TritonBackend:
    launch = {**BLOCK_SPARSE_LAUNCH, 128: LaunchOptions(num_warps=warps, num_stages=stages)}
    return TritonBackend(TritonOptions(use_tma=tma, launch=launch))


def probe_family(family: str, length: int, s: SweepSettings) -> dict:
    cfg = model_config(family, n_layers=1, max_seq_len=length)
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator(device="cuda").manual_seed(length)
    q = torch.randn(1, H, length, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, Hkv, length, D, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    rec = {"dense_ms": fastest_dense(q, k, v, repeats=3)["best_ms"]}
    flex = FlexBackend()
    for mode in ("uniform", "adaptive"):
        sc = sparse_config(mode, cfg, s, backend="flex")
        plan = sc.new_session(cfg, 128, gen_length=128).build_plan(0, q, k, None)
        ref = attend(q, k, v, plan=plan, backend=flex)
        r = {"flex": time_fn(lambda p=plan: attend(q, k, v, plan=p, backend=flex), repeats=5)["median_ms"]}
        for tma, w, st in VARIANTS:
            name = f"triton_{'tma' if tma else 'ptr'}_w{w}_s{st}"
            backend = triton_variant(tma, w, st)
            try:
                o = attend(q, k, v, plan=plan, backend=backend)
                r[name] = time_fn(lambda b=backend, p=plan: attend(q, k, v, plan=p, backend=b),
                                  repeats=5)["median_ms"]
                r["err_" + name] = float((o.float() - ref.float()).abs().max())
            except Exception as e:  # noqa: BLE001  (a variant that does not launch is a result)
                r[name] = repr(e)[:200]
        r["flex_again"] = time_fn(lambda p=plan: attend(q, k, v, plan=p, backend=flex), repeats=5)["median_ms"]
        rec[mode] = r
        print(family, mode, rec["dense_ms"], r, flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=65536, help="tokens (default 65536)")
    args = p.parse_args(argv)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for family in ("llada", "dream"):
        out[family] = probe_family(family, args.length, SweepSettings())
        torch.cuda.empty_cache()
    with open(os.path.join(os.environ.get("OUT", "."), "probe_block_sparse.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
