# ruff: noqa: T201 - a benchmark script reports on stdout
"""The H100 run behind benchmarks/README.md: tune the flex tile options on this GPU, check
that new lengths do not recompile, then the kernel sweep and the end-to-end sweep with the chosen
options, all in one process (the compiled kernels are reused).

    PYTHONPATH=src python benchmarks/run_h100.py --out runs/h100 --budget-s 500

Writes ``tune.json`` (variants, choice, cold/warm kernel calls, compile log) and ``bench.jsonl``
(one record per configuration) under ``--out``; prints the tables. ``--budget-s`` is the wall
time after which no further generation starts (the rest is recorded as skipped).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from adaptive_dllm.attention.api import attend, get_backend, register_backend
from adaptive_dllm.attention.flex import FLEX_TILES, FlexBackend, FlexOptions
from adaptive_dllm.bench.sweep import (
    SweepSettings,
    model_config,
    run_sweep,
    sparse_config,
    table,
)
from adaptive_dllm.bench.timing import environment, fastest_dense, time_fn

VARIANTS = [
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},  # the library default
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "USE_TMA": True},
    {"BLOCK_M": 128, "BLOCK_N": 64, "USE_TMA": True},  # inductor's H100 tile (8 warps, 3 stages)
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4, "USE_TMA": True},
]


def _inputs(cfg, L, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (1, cfg.n_heads, L, cfg.head_dim)
    q = torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)
    kv = (1, cfg.n_kv_heads, L, cfg.head_dim)
    k = torch.randn(*kv, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(*kv, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v


def tune(family: str, L: int, s: SweepSettings) -> dict:
    cfg = model_config(family, n_layers=1, max_seq_len=L)
    q, k, v = _inputs(cfg, L)
    dense = fastest_dense(q, k, v)
    session = sparse_config("uniform", cfg, s).new_session(cfg, s.steps, gen_length=s.gen_length)
    plan = session.build_plan(0, q, k, None)
    ref = attend(q, k, v, plan=plan, backend="flex").float()
    rows = []
    for opts in VARIANTS:
        # One backend per variant: the options are the backend's, no module is mutated.
        backend = FlexBackend(FlexOptions(tiles={**FLEX_TILES, 128: opts}))
        prepared = backend.prepare(plan, cfg.n_heads)
        try:
            t = time_fn(functools.partial(backend.run, q, k, v, plan=plan, prepared=prepared),
                        warmup=2, repeats=5)
            err = float((backend.run(q, k, v, plan=plan, prepared=prepared).float()
                         - ref).abs().max())
            rows.append({"options": opts, "ms": t["median_ms"], "max_diff_vs_first": err,
                         "compile_s": sum(c.seconds for c in backend.compile_log)})
        except Exception as exc:  # noqa: BLE001 - a variant this build cannot compile
            rows.append({"options": opts, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        print(family, L, rows[-1], flush=True)
    ok = [r for r in rows if "ms" in r and r["max_diff_vs_first"] < 0.05]
    best = min(ok, key=lambda r: r["ms"])["options"]
    register_backend("flex", FlexBackend(FlexOptions(tiles={**FLEX_TILES, 128: best})))
    return {"family": family, "seq_len": L, "dense": dense, "variants": rows, "best": best,
            "keep_ratio": plan.keep_ratio()}


def cold_calls(family: str, s: SweepSettings, lengths=(20000, 40000, 65000)) -> list[dict]:
    """First vs second flex call (plan build excluded) at lengths never seen before."""
    from torch._dynamo.utils import counters

    out = []
    cfg = model_config(family, n_layers=1, max_seq_len=max(lengths))
    for L in lengths:
        q, k, v = _inputs(cfg, L, seed=L)
        session = sparse_config("uniform", cfg, s).new_session(cfg, s.steps, gen_length=128)
        plan = session.build_plan(0, q, k, None)
        torch.cuda.synchronize()
        graphs = counters["stats"]["unique_graphs"]
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            attend(q, k, v, plan=plan, backend="flex")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out.append({"family": family, "seq_len": L, "first_s": times[0], "second_s": times[1],
                    "new_graphs": counters["stats"]["unique_graphs"] - graphs})
        print(out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--tune-length", type=int, default=65536)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    p.add_argument("--e2e-lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--largest-modes", nargs="*", default=["uniform"])
    args = p.parse_args()
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None if args.budget_s is None else start + args.budget_s
    s = SweepSettings(lengths=tuple(args.lengths), e2e_lengths=tuple(args.e2e_lengths),
                      n_layers=args.layers, deadline=deadline,
                      largest_modes=tuple(args.largest_modes) or None)
    result = {"env": environment(), "mass_kernel": "onepass",
              "tune": [tune("llada", args.tune_length, s)]}
    result["cold_calls"] = cold_calls("llada", s) + cold_calls("dream", s, lengths=(30000, 65000))
    result["compile_log"] = [c.__dict__ for c in get_backend("flex").compile_log]
    (out / "tune.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"tuning done at {time.monotonic() - start:.0f} s", flush=True)
    with open(out / "bench.jsonl", "w") as f:
        def emit(r: dict) -> None:
            f.write(json.dumps(r, default=str) + "\n")
            f.flush()
            print(f"[{time.monotonic() - start:.0f} s] {r.get('kind')} {r.get('family')} "
                  f"{r.get('seq_len')} {r.get('mode', '')} {r.get('run', '')}", flush=True)

        records = run_sweep(s, what=("kernel", "e2e"), emit=emit)
    print(table(records), flush=True)
    result["compile_log"] = [c.__dict__ for c in get_backend("flex").compile_log]
    (out / "tune.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
