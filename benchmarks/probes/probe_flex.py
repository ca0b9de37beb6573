"""Does flex kernel time depend on the data? Same plan shape, plans built from the q/k they run
on vs from other random q/k. One H100 80GB HBM3, torch 2.11.0+cu130, 2026-11-27:

    OUT=runs/probe PYTHONPATH=src python benchmarks/probes/probe_flex.py

Result (ms): model plan + model q/k 48.2, random plan + model q/k 56.5, random + random 48.2.
Needs a CUDA GPU.
"""
import argparse
import json
import os

import torch

from adaptive_dllm.attention.api import attend
from adaptive_dllm.attention.flex import FlexBackend
from adaptive_dllm.bench.settings import SweepSettings, model_config, random_model, sparse_config
from adaptive_dllm.bench.timing import sdpa_backend, time_fn


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=65536 + 128, help="tokens (default 65664)")
    L = p.parse_args(argv).length
    out: dict = {}
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
        for step in (25, 26):  # the build step, then a sparse one
            session.begin_step(step, 128)
            model(ids, attn=spy, logits_from=L - 128)
    qm, km, vm = cap["qkv"]
    pm = session.plan_of(0)
    out["model_qkv"] = [list(t.shape) + list(t.stride()) for t in (qm, km, vm)]
    out["q_std"], out["k_std"] = float(qm.float().std()), float(km.float().std())
    g = torch.Generator(device="cuda").manual_seed(0)
    qr, kr, vr = (torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
                  for _ in range(3))
    pr = sparse_config("uniform", cfg, s).new_session(cfg, 128, gen_length=128).build_plan(
        0, qr, kr, None)
    flex = FlexBackend()

    def t(plan, q, k, v):
        return time_fn(lambda: attend(q, k, v, plan=plan, backend=flex), warmup=2, repeats=5)["median_ms"]

    out["model_plan_model_qkv"] = t(pm, qm, km, vm)
    out["model_plan_model_qkv_vcontig"] = t(pm, qm, km, vm.contiguous())
    out["model_plan_random_qkv"] = t(pm, qr, kr, vr)
    out["random_plan_model_qkv"] = t(pr, qm, km, vm)
    out["random_plan_random_qkv"] = t(pr, qr, kr, vr)
    out["model_qkv_scaled_random_plan"] = t(pr, qm * 50, km * 50, vm)
    for name, plan in (("model", pm), ("random", pr)):
        out[f"{name}_plan"] = {"shape": list(plan.indices.shape), "keep": plan.keep_ratio(),
                               "counts_min_max": [int(plan.counts.min()), int(plan.counts.max())]}
    print(json.dumps(out, indent=1))
    with open(os.path.join(os.environ.get("OUT", "."), "probe_flex.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
