"""``adllm bench``: attention-kernel and end-to-end timings, dense vs uniform vs adaptive sparse."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from adaptive_dllm.cli.arguments import (
    add_model_args,
    add_quiet,
    add_sampler_args,
    add_sparse_args,
    check_steps,
    positive_int,
    positive_seconds,
)
from adaptive_dllm.cli.lists import add_list, renamed
from adaptive_dllm.cli.plots import check_plot
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import BLOCK_SIZES

#: The "kind" of every record the sweep emits; --out appends only to files of such records.
RECORD_KINDS = ("kernel", "e2e", "decode", "compile", "skipped", "error")

EPILOG = """\
examples:
  adllm bench                                   # kernels 4k-64k + end-to-end 4k/16k/64k, both families
  adllm bench --what kernel --lengths 16384 65536 --family llada --json
  adllm bench --what e2e --n-layers 2 --e2e-lengths 16384 --plot speedup.png --out runs/bench.jsonl
  adllm bench --tiny --device cpu --lengths 256 --e2e-lengths 128 --steps 8 --gen-length 16
  adllm bench --what e2e --cache none prefix --tokens-per-step 4 --modes uniform --e2e-lengths 4096
  adllm bench --what decode --lengths 65536 --select 0.3      # cached-step kernel vs dense SDPA

Needs a CUDA GPU (random bf16 weights at the LLaDA-8B / Dream-7B geometry, fewer layers);
--tiny --device cpu runs a seconds-long smoke test of the harness. Protocol: benchmarks/README.md.
--out appends to a JSONL file of earlier bench records (or creates it); any other existing file
is refused. A line per finished measurement goes to stderr (--quiet: none).

--cache / --threshold / --tokens-per-step switch end-to-end runs to the cache protocol (issue 14):
dense without a cache is the baseline, every other cache mode runs dense and each sparse mode on
each --sparse-backend. Random weights make confidences meaningless: --tokens-per-step K commits
exactly K tokens per forward (steps = gen_length / K) and the records say so.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="time dense vs sparse attention and generation",
        description="Time attention kernels and end-to-end generation: fastest dense SDPA vs "
                    "uniform and adaptive block-sparse attention.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list(p, "--what", choices=("kernel", "e2e", "decode"), default=["kernel", "e2e"],
             help="kernel: prefill attention; e2e: generation; decode: cached-step "
                  "attention (--lengths cached keys)")
    add_list(p, "--family", choices=("llada", "dream"), default=["llada", "dream"])
    add_list(p, "--lengths", convert=positive_int, default=[4096, 8192, 16384, 32768, 65536],
             help="kernel sequence lengths")
    add_list(p, "--e2e-lengths", convert=positive_int, default=[4096, 16384, 65536],
             help="prompt lengths for end-to-end generation")
    p.add_argument("--n-layers", type=positive_int, default=4,
                   help="layers of the random model (e2e)")
    p.add_argument("--layers", type=renamed("--n-layers", "layers of the random model; --layers "
                                            "FIRST:LAST is a layer range in prune and importance"),
                   help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed repeats per kernel (median)")
    add_list(p, "--modes", choices=("uniform", "adaptive"), default=["uniform", "adaptive"],
             help="sparse modes run after dense")
    add_list(p, "--cache", choices=("none", "prefix", "dual"), default=[],
             help="e2e under these K/V cache modes (none = the dense baseline)")
    p.add_argument("--tokens-per-step", type=positive_int, default=None, metavar="K",
                   help="commit exactly K tokens per forward (steps = gen-length / K); must "
                        "divide --block-length; not with --threshold")
    add_list(p, "--sparse-backend", default=["auto"],
             choices=("auto", "triton", "flex", "gather", "reference"),
             help="sparse backends of the cache protocol (default auto)")
    p.add_argument("--e2e-repeats", type=positive_int, default=1, metavar="N",
                   help="timed generations per cache-protocol configuration; the record keeps "
                        "the median run and every total in total_s_samples (default 1)")
    p.add_argument("--window", type=positive_int, default=32,
                   help="queries of a cached step (--what decode, default 32)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold (first) sparse run")
    p.add_argument("--deadline", type=positive_seconds, default=None, metavar="SECONDS",
                   help="start no generation that would end later than this after launch")
    p.add_argument("--tiny", action="store_true", help="tiny geometry (harness smoke test)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON document, {"records": [...]}, when the sweep ends '
                        "(--out streams the same records as JSON Lines while it runs)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="append JSON records to FILE (a new file or one of bench records)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="write a speedup plot (any format matplotlib writes: png, svg, pdf ...)")
    add_quiet(p)
    # The shared groups give every option that means what it means in generate; --modes,
    # --cache and --sparse-backend above are sweep axes (lists, each value run in turn).
    add_model_args(p, only=("device",))
    add_sampler_args(p, only=("steps", "gen_length", "block_length", "threshold", "cuda_graphs"),
                     defaults={"steps": 128, "gen_length": 128, "block_length": 32,
                               "cuda_graphs": True})
    add_sparse_args(p, only=("select", "skip", "block_size"),
                    defaults={"select": 0.3, "skip": 0.2, "block_size": 128})
    p.set_defaults(func=run, parser=p)  # parser: _command reads each option's default


def _command(args: argparse.Namespace) -> str:
    """The command line with every option's value (defaults included): what the records ran."""
    skip = {"func", "parser", "command", "json", "out", "plot", "quiet", "verbose"}
    parts = ["adllm", "bench"]
    for name, value in vars(args).items():
        if name in skip or value is None or value == []:
            continue
        flag = "--" + name.replace("_", "-")
        if value is False:  # a switch left off, or a default-on one turned off (--no-...)
            if args.parser.get_default(name) is True:
                parts.append("--no-" + name.replace("_", "-"))
        elif value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and value.get("kind") in RECORD_KINDS and "family" in value


def run(args: argparse.Namespace) -> int:
    import torch

    from adaptive_dllm._io import (
        append_jsonl,
        check_jsonl_append,
        dumps_json,
        open_jsonl_append,
    )
    from adaptive_dllm.bench.reports import plot, table
    from adaptive_dllm.bench.sweep import SweepSettings, run_sweep
    from adaptive_dllm.cli.plots import save_plot

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cuda") and not args.tiny:
        raise AdllmError("full-size benchmarks need a CUDA GPU; add --tiny for a CPU smoke test")
    check_steps(args.steps, args.gen_length)
    if args.tokens_per_step is not None and args.threshold is not None:
        raise AdllmError(f"--tokens-per-step {args.tokens_per_step} and --threshold "
                         f"{args.threshold:g} exclude each other; give one")
    if args.block_size not in BLOCK_SIZES:  # the option also lists the reference backend's
        raise AdllmError(f"--block-size {args.block_size}: the benchmarks time the kernels, which "
                         f"take {', '.join(map(str, BLOCK_SIZES))}")
    if "decode" in args.what and args.window > min(args.lengths):
        raise AdllmError(f"--window {args.window}: a cached step's queries are a window of the "
                         f"keys, so it must be at most the shortest --lengths ({min(args.lengths)})")
    from adaptive_dllm.sparsity.config import SparseConfig

    SparseConfig(select=args.select, skip=args.skip, block_size=args.block_size)  # validates
    if args.out:
        args.out = check_jsonl_append(args.out, is_own=_is_record)
    check_plot(args.plot, inputs=[args.out])
    settings = SweepSettings(
        families=tuple(args.family), lengths=tuple(args.lengths),
        e2e_lengths=tuple(args.e2e_lengths), n_layers=args.n_layers, select=args.select,
        skip=args.skip, block_size=args.block_size, steps=args.steps, gen_length=args.gen_length,
        repeats=args.repeats, modes=tuple(args.modes), cold=not args.no_cold, tiny=args.tiny,
        device=device, dtype="bfloat16" if device.startswith("cuda") else "float32",
        deadline=None if args.deadline is None else time.monotonic() + args.deadline,
        caches=tuple(args.cache), tokens_per_step=args.tokens_per_step, threshold=args.threshold,
        llada_block_length=args.block_length, cache_backends=tuple(args.sparse_backend),
        window=args.window, e2e_repeats=args.e2e_repeats, cuda_graphs=args.cuda_graphs,
        command=_command(args))
    if settings.e2e_repeats != 1 and not (settings.cache_sweep and "e2e" in args.what):
        raise AdllmError(f"--e2e-repeats {args.e2e_repeats} repeats the cache protocol's "
                         "generations only: add --what e2e with --cache, or drop it")
    out = open_jsonl_append(args.out) if args.out else None  # closed below

    def emit(rec: dict) -> None:
        if out is not None:
            append_jsonl(out, rec)
        if not args.quiet:
            print(f"  done: {rec.get('kind')} {rec.get('family')} {rec.get('seq_len')} "
                  f"{rec.get('mode', '')} {rec.get('run', '')}", file=sys.stderr, flush=True)

    try:
        records = run_sweep(settings, what=args.what, emit=emit)
    finally:
        if out is not None:
            out.close()
    if args.json:  # one strict JSON document, as every --json of the CLI prints
        print(dumps_json({"records": records}), flush=True)
    else:
        print(table(records))
    if args.plot:
        save_plot(lambda tmp: plot(records, str(tmp)), args.plot)
    return 0
