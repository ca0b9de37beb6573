"""Reproduces the FX-graph-cache bug (torch 2.11.0+cu130, H100, 2026-11-27): after flex was
compiled for one block size, an MHA call with another block size got the first graph.

    for v in default nofxcache; do TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$v \\
        PYTHONPATH=src python benchmarks/probes/probe_cache.py $v; done

default: max error 1.42 / 1.51 / 1.42 on the block-64 and block-32 MHA calls after the first
compile; nofxcache: 0.004 everywhere. The library now compiles with fx_graph_cache=False, so
"default" no longer reproduces it unless flex.py's option is removed. Needs a CUDA GPU; run from
the repository root (it borrows the inputs of tests/attention/test_flex.py).
"""
import argparse
import sys

import torch

SEQUENCE = [(4, 4, 128, 32), (4, 4, 256, 64), (4, 4, 512, 128), (8, 8, 256, 64), (8, 8, 512, 32),
            (8, 2, 256, 64), (4, 4, 1024, 64)]  # (H, Hkv, L, block size)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", choices=("default", "nofxcache", "nocaches"),
                   help="inductor caches as they are, without the FX graph cache, or none")
    variant = p.parse_args(argv).variant
    import torch._inductor.config as ic

    if variant == "nofxcache":
        ic.fx_graph_cache = False
    if variant == "nocaches":
        ic.force_disable_caches = True
    sys.path[:0] = ["tests/attention", "tests"]
    from test_flex import _inputs, _max_err, _plan

    from adaptive_dllm.attention.api import attend
    from adaptive_dllm.attention.flex import FlexBackend
    from adaptive_dllm.attention.reference import reference_attention

    flex = FlexBackend()

    def run(H, Hkv, L, bs, D=64, seed=0):
        q, k, v = _inputs(1, H, Hkv, L, D, device="cuda", dtype=torch.bfloat16, seed=seed)
        plan = _plan(q, k, bs)
        out = attend(q, k, v, plan=plan, backend=flex)
        ref = reference_attention(q.float(), k.float(), v.float(), plan=plan)
        return round(_max_err(out, ref), 3)

    print(variant, [(s, run(*s)) for s in SEQUENCE], flush=True)


if __name__ == "__main__":
    main()
