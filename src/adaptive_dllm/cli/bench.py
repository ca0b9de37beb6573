"""``adllm bench``: attention-kernel and end-to-end timings, dense vs uniform vs adaptive sparse."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from adaptive_dllm.errors import AdllmError

EPILOG = """\
examples:
  adllm bench                                   # kernels 4k-64k + end-to-end 4k/16k/64k, both families
  adllm bench --what kernel --lengths 16384 65536 --family llada --json
  adllm bench --what e2e --layers 2 --e2e-lengths 16384 --plot speedup.png --out runs/bench.jsonl
  adllm bench --tiny --device cpu --lengths 256 --e2e-lengths 128 --steps 8 --gen-length 16

Needs a CUDA GPU (random bf16 weights at the LLaDA-8B / Dream-7B geometry, fewer layers);
--tiny --device cpu runs a seconds-long smoke test of the harness. Protocol: benchmarks/README.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="time dense vs sparse attention and generation",
        description="Time attention kernels and end-to-end generation: fastest dense SDPA vs "
                    "uniform and adaptive block-sparse attention.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", nargs="+", choices=("kernel", "e2e"), default=["kernel", "e2e"])
    p.add_argument("--family", nargs="+", choices=("llada", "dream"), default=["llada", "dream"])
    p.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192, 16384, 32768, 65536],
                   help="kernel sequence lengths")
    p.add_argument("--e2e-lengths", nargs="+", type=int, default=[4096, 16384, 65536],
                   help="prompt lengths for end-to-end generation")
    p.add_argument("--layers", type=int, default=4, help="layers of the random model (e2e)")
    p.add_argument("--select", type=float, default=0.3,
                   help="mean fraction of key blocks kept, in (0, 1] (default 0.3)")
    p.add_argument("--skip", type=float, default=0.2,
                   help="fraction of steps run dense before the plan (default 0.2)")
    p.add_argument("--block-size", type=int, default=128, choices=(32, 64, 128))
    p.add_argument("--steps", type=int, default=128, help="denoising steps (default 128)")
    p.add_argument("--gen-length", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per kernel (median)")
    p.add_argument("--modes", nargs="+", choices=("uniform", "adaptive"),
                   default=["uniform", "adaptive"])
    p.add_argument("--no-cold", action="store_true", help="skip the cold (first) sparse run")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="start no generation that would end later than this after launch")
    p.add_argument("--tiny", action="store_true", help="tiny geometry (harness smoke test)")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (with --tiny)")
    p.add_argument("--json", action="store_true", help="print one JSON record per line")
    p.add_argument("--out", default=None, metavar="FILE", help="append JSON records to FILE")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a speedup plot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from adaptive_dllm.bench.reports import plot, table
    from adaptive_dllm.bench.sweep import SweepSettings, run_sweep

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AdllmError("adllm bench needs a CUDA GPU; use --tiny --device cpu for a smoke test")
    if device != "cuda" and not args.tiny:
        raise AdllmError("full-size benchmarks need a CUDA GPU; add --tiny for a CPU smoke test")
    for name in ("layers", "steps", "gen_length", "repeats"):
        if getattr(args, name) < 1:
            raise AdllmError(f"--{name.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in args.lengths + args.e2e_lengths):
        raise AdllmError("lengths must be positive")
    from adaptive_dllm.sparsity.config import SparseConfig

    SparseConfig(select=args.select, skip=args.skip, block_size=args.block_size)  # validates
    settings = SweepSettings(
        families=tuple(args.family), lengths=tuple(args.lengths),
        e2e_lengths=tuple(args.e2e_lengths), n_layers=args.layers, select=args.select,
        skip=args.skip, block_size=args.block_size, steps=args.steps, gen_length=args.gen_length,
        repeats=args.repeats, modes=tuple(args.modes), cold=not args.no_cold, tiny=args.tiny,
        device=device, dtype="bfloat16" if device == "cuda" else "float32",
        deadline=None if args.deadline is None else time.monotonic() + args.deadline)
    out = None
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        out = open(args.out, "a")  # noqa: SIM115 - closed below

    def emit(rec: dict) -> None:
        line = json.dumps(rec, default=str)
        if out is not None:
            out.write(line + "\n")
            out.flush()
        if args.json:
            print(line, flush=True)
        else:
            print(f"  done: {rec.get('kind')} {rec.get('family')} {rec.get('seq_len')} "
                  f"{rec.get('mode', '')} {rec.get('run', '')}", file=sys.stderr, flush=True)

    try:
        records = run_sweep(settings, what=args.what, emit=emit)
    finally:
        if out is not None:
            out.close()
    if not args.json:
        print(table(records))
    if args.plot:
        plot(records, args.plot)
    return 0
