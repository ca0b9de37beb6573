"""One attention call on the CPU: the eager reference vs the gather backend vs dense SDPA.

    PYTHONPATH=src python benchmarks/probes/cpu_gather.py \
        [--out benchmarks/results/cpu_gather_attention.jsonl]

Random float32 q/k/v at L=2080, H=8, Hkv=2, D=32 (one batch), plans with every KV-head unit
keeping ~keep of the key blocks in every row (joint region, the diagonal block included), block
sizes 32 and 64, keep 0.3 and 0.1. One thread; the number is the median process CPU seconds of
one call (``time.process_time``) over the repeats, after one warm-up call. The plan is prepared
once (``GatherBackend.prepare``, as the sparse session does) and that cost is reported apart.
Appends one JSON record (atomically: the file is rewritten through a temporary file).
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adaptive_dllm._io import atomic_write
from adaptive_dllm.attention.gather import GatherBackend
from adaptive_dllm.attention.plan import build_plan
from adaptive_dllm.attention.reference import reference_attention
from adaptive_dllm.kernels.support import n_blocks

L, H, HKV, D = 2080, 8, 2, 32


def cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, first-use paths)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure(bs: int, keep: float, repeats: int) -> dict:
    g = torch.Generator().manual_seed(bs)
    q = torch.randn(1, H, L, D, generator=g)
    k, v = (torch.randn(1, HKV, L, D, generator=g) for _ in range(2))
    N = n_blocks(L, bs)
    count = max(1, round(keep * N))
    plan = build_plan(torch.rand(1, HKV, N, N, generator=g), torch.full((HKV,), count), None,
                      layer=0, block_size=bs, seq_len=L, prompt_blocks=N, group=H // HKV)
    backend = GatherBackend()
    prepared = backend.prepare(plan, H)
    out = backend.run(q, k, v, plan=plan, prepared=prepared)
    err = float((out - reference_attention(q, k, v, plan=plan)).abs().max())
    return {
        "block_size": bs, "keep": keep, "keep_ratio": plan.keep_ratio(),
        "reference_s": cpu_seconds(lambda: reference_attention(q, k, v, plan=plan), repeats),
        "gather_s": cpu_seconds(lambda: backend.run(q, k, v, plan=plan, prepared=prepared),
                                repeats),
        "gather_prepare_s": cpu_seconds(lambda: backend.prepare(plan, H), repeats),
        "dense_sdpa_s": cpu_seconds(
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), repeats),
        "max_abs_err_vs_reference": err,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="append the record to this JSONL file")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [measure(bs, keep, args.repeats) for bs in (32, 64) for keep in (0.3, 0.1)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    record = {"probe": "cpu_gather_attention", "commit": commit, "device": f"CPU ({cpu_name()})",
              "torch": torch.__version__, "threads": 1, "dtype": "float32",
              "shape": {"B": 1, "L": L, "H": H, "Hkv": HKV, "D": D},
              "command": "PYTHONPATH=src python benchmarks/probes/cpu_gather.py "
                         f"--repeats {args.repeats}" + (f" --out {args.out}" if args.out else ""),
              "unit": "median process CPU seconds per call", "rows": rows}
    line = json.dumps(record)
    sys.stdout.write(line + "\n")
    if args.out:
        path = Path(args.out)
        old = path.read_text() if path.exists() else ""
        with atomic_write(path) as fh:
            fh.write(old + line + "\n")


if __name__ == "__main__":
    main()
