"""The fused build step against cuDNN attention + the separate one-pass scoring kernel, one layer
at 64k tokens (LLaDA-8B and Dream-7B head geometry, random bf16 q/k/v), for several tilings of
the fused kernel; also its error against cuDNN and its masses against the separate kernel's.

    OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_fused_build.py

Tilings are keyword arguments of kernels.attend_and_score (nothing global is changed). Needs a
CUDA GPU.
"""
import argparse
import json
import os

import torch

from adaptive_dllm.bench.settings import model_config
from adaptive_dllm.bench.timing import fastest_dense, time_fn
from adaptive_dllm.kernels.attend_and_score import attend_and_score
from adaptive_dllm.kernels.block_mass import block_mass_triton

TILINGS = [(128, 8, 3), (128, 8, 2), (128, 4, 3), (128, 4, 2), (64, 4, 3)]  # (BLOCK_M, warps, stages)


def probe_family(family: str, L: int, bs: int) -> dict:
    cfg = model_config(family, n_layers=1, max_seq_len=L)
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    rec = {"dense": fastest_dense(q, k, v, repeats=3)}
    rec["separate_scoring_ms"] = time_fn(lambda: block_mass_triton(q, k, block_size=bs),
                                         warmup=1, repeats=3)["median_ms"]
    ref_mass = block_mass_triton(q, k, block_size=bs)
    ref_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv)
    for bm, w, st in TILINGS:
        name = f"bm{bm}_w{w}_s{st}"

        def fn(bm=bm, w=w, st=st):
            return attend_and_score(q, k, v, block_size=bs, block_m=bm, num_warps=w, num_stages=st)

        try:
            o, m = fn()
            rec[name] = {"ms": time_fn(fn, warmup=1, repeats=3)["median_ms"],
                         "out_err_vs_sdpa": float((o.float() - ref_out.float()).abs().max()),
                         "mass_rel_err": float(((m - ref_mass).abs() / ref_mass.abs().clamp_min(1e-6)).max()),
                         "mass_abs_err": float((m - ref_mass).abs().max())}
        except Exception as e:  # noqa: BLE001  (a tiling that does not launch is a result)
            rec[name] = {"error": repr(e)[:300]}
        print(family, name, rec[name], flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=65536 + 128, help="tokens (default 65664)")
    p.add_argument("--block-size", type=int, default=128, help="key block size (default 128)")
    args = p.parse_args(argv)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for family in ("llada", "dream"):
        out[family] = probe_family(family, args.length, args.block_size)
        torch.cuda.empty_cache()
    with open(os.path.join(os.environ.get("OUT", "."), "probe_fused_build.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
