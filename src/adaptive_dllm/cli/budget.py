"""``adllm budget``: the keep-ratio report, per ``select`` value, from the real allocator."""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adaptive_dllm.budget import Allocation, allocate, relative_weights, uniform_weights
from adaptive_dllm.budget.weights import NORMALIZATIONS
from adaptive_dllm.cli.arguments import add_sparse_args, positive_int, seed
from adaptive_dllm.cli.plots import check_plot, save_plot
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance import HeadImportance

#: Named shapes: the real geometries of ``ModelConfig.preset`` (layers, query heads, KV heads).
SHAPES = ("llada-8b", "dream-7b")
#: Bounds that keep a typo from allocating terabytes: 1M heads (real models have ~1k) and 1M key
#: blocks per row (64M tokens in blocks of 64).
MAX_HEADS = 1_000_000
MAX_BLOCKS = 1_000_000
DEFAULT_SELECT = "0.2,0.3,0.5,0.8,1.0"

EPILOG = """\
examples:
  adllm budget --shape llada-8b --synthetic lognormal --seed 0 --blocks 128
  adllm budget --shape dream-7b --synthetic lognormal --select 0.1,0.3,0.9 --seq-len 4096 \\
      --block-size 128 --per-layer
  adllm budget --importance llada_importance.safetensors --shape llada-8b --blocks 32 \\
      --plot keep.png
  adllm budget --importance head_importance.pt --negate --shape 32x32 --blocks 64 --json

--shape is llada-8b (32 layers x 32 heads, MHA), dream-7b (28 layers x 28 query heads, 4 KV
heads) or LAYERSxHEADS[xKV_HEADS]. With --importance it checks the file's shape. Units are
(layer, KV head) pairs unless --gqa query. Saturated units keep all N blocks; floored units keep
the minimum. Upstream .pt files need --negate (HeadIG loss gradients: useful heads negative)
or --no-negate (already higher = more important).
"""


@dataclass(frozen=True)
class _Source:
    """Where the weights came from, for the report."""

    label: str
    unit: str  # "KV-head" or "query-head"
    info: dict[str, Any]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "budget",
        help="report per-head keep ratios for select values",
        description="Allocate key blocks per (layer, head) for each select value and report "
                    "target vs realised keep ratio, saturated and floored units.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("importance")
    src.add_argument("--importance", metavar="FILE",
                     help="head-importance .safetensors (or upstream .pt with --negate/--no-negate)")
    src.add_argument("--shape", metavar="SHAPE",
                     help="llada-8b, dream-7b or LAYERSxHEADS[xKV_HEADS]")
    src.add_argument("--synthetic", choices=("uniform", "lognormal"),
                     help="synthetic importance for --shape (default uniform)")
    src.add_argument("--seed", type=seed, default=0, help="seed for --synthetic lognormal")
    src.add_argument("--sigma", type=float, default=0.6,
                     help="log-normal spread for --synthetic lognormal (default 0.6)")
    src.add_argument("--negate", action=argparse.BooleanOptionalAction, default=None,
                     help="negate an upstream .pt file's scores on import")
    src.add_argument("--kv-heads", type=positive_int, metavar="K",
                     help="KV heads per layer, when neither --shape nor the file says")
    blk = p.add_argument_group("blocks")
    blk.add_argument("--select", default=DEFAULT_SELECT, metavar="LIST",
                     help=f"comma-separated mean keep ratios in (0, 1] (default {DEFAULT_SELECT})")
    blk.add_argument("--blocks", type=int, metavar="N", help="key blocks per row")
    blk.add_argument("--seq-len", type=int, metavar="L", help="sequence length (with --block-size)")
    blk.add_argument("--block-size", type=int, metavar="BS", help="block size (with --seq-len)")
    add_sparse_args(p, only=("gqa", "min_keep_ratio"), defaults={"gqa": "kv", "min_keep_ratio": 0.0})
    opt = p.add_argument_group("weights and allocation")
    opt.add_argument("--normalize", choices=NORMALIZATIONS, default="global_percentile")
    opt.add_argument("--scale", type=float, default=2 / 3, help="weight spread in [0, 1)")
    opt.add_argument("--invert", action="store_true", help="give important heads less budget")
    opt.add_argument("--min-blocks", type=int, default=1, help="hard minimum blocks per unit")
    opt.add_argument("--budget", choices=("global", "per_layer"), default="global")
    opt.add_argument("--strict", action="store_true",
                     help="refuse a select below the floor instead of lowering it")
    out = p.add_argument_group("output")
    out.add_argument("--per-layer", action="store_true", help="add a per-layer table")
    out.add_argument("--plot", metavar="FILE.png",
                     help="keep-ratio heatmap and histogram (png, svg, pdf ...)")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptive_dllm._io import dumps_json

    check_plot(args.plot, inputs=[args.importance])
    selects = _parse_selects(args.select)
    n_blocks = _n_blocks(args)
    weights, source = _weights(args)
    allocations = [
        allocate(weights, s, n_blocks, min_keep_ratio=args.min_keep_ratio,
                 min_blocks=args.min_blocks, budget=args.budget, strict=args.strict)
        for s in selects
    ]
    if args.json:
        print(dumps_json(_json_report(allocations, source, args)))
    else:
        _print_report(allocations, source, args)
    if args.plot:
        path = _plot(allocations, source, args.plot)
        print(f"plot written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


# -- inputs ------------------------------------------------------------------------------------
def _parse_selects(text: str) -> list[float]:
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise AdllmError(f"--select value {item.strip()!r} is not a number; give a "
                             "comma-separated list such as 0.2,0.3,0.5") from None
        if not 0.0 < value <= 1.0:
            raise AdllmError(f"--select value {value:g} is outside (0, 1]; select is the mean "
                             "fraction of key blocks kept")
        values.append(value)
    return values


def _n_blocks(args: argparse.Namespace) -> int:
    if args.blocks is not None:
        if args.seq_len is not None or args.block_size is not None:
            raise AdllmError("give either --blocks N or --seq-len L --block-size BS, not both")
        if not 1 <= args.blocks <= MAX_BLOCKS:
            raise AdllmError(f"--blocks {args.blocks} must be in [1, {MAX_BLOCKS:,}]")
        return args.blocks
    if args.seq_len is None or args.block_size is None:
        raise AdllmError("give the number of key blocks: --blocks N, or --seq-len L with "
                         "--block-size BS")
    if args.seq_len < 1 or args.block_size < 1:
        raise AdllmError(f"--seq-len {args.seq_len} and --block-size {args.block_size} must be "
                         "at least 1")
    blocks = math.ceil(args.seq_len / args.block_size)
    if blocks > MAX_BLOCKS:
        raise AdllmError(f"--seq-len {args.seq_len} / --block-size {args.block_size} = {blocks:,} "
                         f"key blocks; at most {MAX_BLOCKS:,}")
    return blocks


def _parse_shape(text: str) -> tuple[int, int, int]:
    if text in SHAPES:
        from adaptive_dllm.models.config import ModelConfig

        config = ModelConfig.preset(text)
        return config.n_layers, config.n_heads, config.n_kv_heads
    match = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", text)
    if not match:
        raise AdllmError(f"--shape {text!r} is not {', '.join(SHAPES)} or LAYERSxHEADS[xKV_HEADS]"
                         ", e.g. 32x32 or 28x28x4")
    layers, heads = int(match[1]), int(match[2])
    kv = int(match[3]) if match[3] else heads
    if min(layers, heads, kv) < 1 or heads % kv:
        raise AdllmError(f"--shape {text!r}: sizes must be positive and HEADS a multiple of "
                         "KV_HEADS")
    if layers * heads > MAX_HEADS:
        raise AdllmError(f"--shape {text!r} has {layers * heads:,} heads; at most "
                         f"{MAX_HEADS:,} (a budget table of a real model is far smaller)")
    return layers, heads, kv


def _weights(args: argparse.Namespace) -> tuple[Tensor, _Source]:
    if not 0.0 <= args.scale < 1.0:  # checked here too: uniform importance never uses it
        raise AdllmError(f"--scale {args.scale:g} must be in [0, 1) so that every weight stays "
                         "positive")
    shape = _parse_shape(args.shape) if args.shape else None
    if args.importance:
        return _file_weights(args, shape)
    if shape is None:
        raise AdllmError("give --importance FILE or --shape llada-8b|dream-7b|LAYERSxHEADS")
    if args.kv_heads is not None:  # the shape says how many (or LAYERSxHEADSxKV_HEADS does)
        raise AdllmError(f"--kv-heads {args.kv_heads} goes with --importance FILE only; write "
                         f"the KV heads into the shape instead, e.g. --shape "
                         f"{shape[0]}x{shape[1]}x{args.kv_heads}")
    return _synthetic_weights(args, shape)


def _weight_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"normalize": args.normalize, "scale": args.scale, "invert": args.invert,
            "gqa": args.gqa}


def _unit(args: argparse.Namespace) -> str:
    return "KV-head" if args.gqa == "kv" else "query-head"


def _file_weights(args: argparse.Namespace, shape: tuple[int, int, int] | None
                  ) -> tuple[Tensor, _Source]:
    if args.synthetic:
        raise AdllmError("--synthetic makes up importance; it cannot be combined with "
                         "--importance")
    if args.kv_heads is not None and (shape is not None or args.kv_heads < 1):
        raise AdllmError(f"--kv-heads {args.kv_heads}: give a positive count, and only "
                         "without --shape (the shape already says)")
    imp = _load_importance(args, shape)
    if shape is not None:
        imp.validate_shape(n_layers=shape[0], n_heads=shape[1], n_kv_heads=shape[2])
        group = shape[1] // shape[2]
    elif args.kv_heads is not None and imp.head_kind == "query":
        if imp.n_heads % args.kv_heads:
            raise AdllmError(f"--kv-heads {args.kv_heads} does not divide the file's "
                             f"{imp.n_heads} heads per layer")
        group = imp.n_heads // args.kv_heads
    else:
        group = imp.group_size or 1
    weights = imp.weights(group, **_weight_options(args))
    estimator = imp.metadata.get("estimator")
    info = {"kind": "file", "path": str(args.importance), "head_kind": imp.head_kind,
            "estimator": estimator, "family": imp.metadata.get("family"),
            "negated_on_import": args.negate}
    label = f"{args.importance} ({estimator}, {imp.head_kind} heads)"
    return weights, _Source(label, _unit(args), info)


def _synthetic_weights(args: argparse.Namespace, shape: tuple[int, int, int]
                       ) -> tuple[Tensor, _Source]:
    layers, heads, kv = shape
    kind = args.synthetic or "uniform"
    info: dict[str, Any] = {"kind": "synthetic", "shape": args.shape, "synthetic": kind}
    if kind == "uniform":
        weights = uniform_weights(layers, kv if args.gqa == "kv" else heads)
        return weights, _Source(f"{args.shape}, uniform importance", _unit(args), info)
    if not 0 < args.sigma < math.inf:
        raise AdllmError(f"--sigma {args.sigma:g} must be a positive finite spread")
    gen = torch.Generator().manual_seed(args.seed)
    scores = torch.randn(layers, heads, generator=gen, dtype=torch.float64).mul(args.sigma).exp()
    weights = relative_weights(scores, group_size=heads // kv, **_weight_options(args))
    info.update(seed=args.seed, sigma=args.sigma)
    label = f"{args.shape}, log-normal importance (seed {args.seed}, sigma {args.sigma:g})"
    return weights, _Source(label, _unit(args), info)


def _load_importance(args: argparse.Namespace, shape: tuple[int, int, int] | None
                     ) -> HeadImportance:
    path = Path(args.importance)
    if path.suffix in (".pt", ".pth"):
        if args.negate is None:
            raise AdllmError(f"{path} is an upstream torch file: say whether to negate its "
                             "scores, --negate (HeadIG loss gradients) or --no-negate")
        # With --shape, the shape check after loading names both shapes; don't fail earlier.
        kv = args.kv_heads if shape is None else None
        return HeadImportance.from_upstream(path, negate=args.negate, n_kv_heads=kv)
    if args.negate is not None:
        raise AdllmError("--negate/--no-negate apply to upstream .pt files only; artifacts "
                         "already follow higher = more important")
    return HeadImportance.load(path)


# -- outputs -----------------------------------------------------------------------------------
def _json_report(allocations: list[Allocation], source: _Source,
                 args: argparse.Namespace) -> dict[str, Any]:
    first = allocations[0]
    results = []
    for a in allocations:
        entry = {**a.summary(), "blocks": a.blocks.tolist()}
        if args.per_layer:
            entry["per_layer"] = a.layer_summary()
        results.append(entry)
    return {
        "source": source.info,
        "n_layers": first.blocks.shape[0],
        "units_per_layer": first.blocks.shape[1],
        "n_units": first.n_units,
        "unit": source.unit,
        "blocks_total": first.n_blocks,
        "options": {"normalize": args.normalize, "scale": args.scale, "invert": args.invert,
                    "gqa": args.gqa, "min_keep_ratio": args.min_keep_ratio,
                    "min_blocks": args.min_blocks, "budget": args.budget,
                    "strict": args.strict},
        "results": results,
    }


def _print_report(allocations: list[Allocation], source: _Source,
                  args: argparse.Namespace) -> None:
    first = allocations[0]
    layers, per_layer = first.blocks.shape
    print(f"importance: {source.label}")
    print(f"units:      {layers} layers x {per_layer} {source.unit} units = {first.n_units}; "
          f"N = {first.n_blocks} key blocks per row")
    print(f"weights:    {args.normalize}, scale {args.scale:.3g}"
          f"{', inverted' if args.invert else ''}; budget {args.budget}, floor "
          f"{first.requested_k_min} block(s)")
    print()
    head = (f"{'select':>7}  {'target blk':>10}  {'kept blk':>10}  {'mean keep':>9}  "
            f"{'deviation':>10}  {'saturated':>11}  {'floored':>11}  {'min keep':>8}  "
            f"{'max keep':>8}")
    print(head)
    for a in allocations:
        s = a.summary()
        saturated, floored = f"{a.saturated}/{a.n_units}", f"{a.floored}/{a.n_units}"
        print(f"{a.select:>7.3g}  {a.target_total:>10d}  {a.realised_total:>10d}  "
              f"{s['realised_mean']:>9.6f}  {s['deviation']:>+10.6f}  "
              f"{saturated:>11}  {floored:>11}  "
              f"{s['keep_ratio_min']:>8.4f}  {s['keep_ratio_max']:>8.4f}")
    notes = [f"  select {a.select:g}: {a.note}" for a in allocations if a.note]
    if notes:
        print("\nnotes:")
        print("\n".join(notes))
    if args.per_layer:
        for a in allocations:
            print(f"\nper layer, select {a.select:g}:")
            print(f"{'layer':>5}  {'mean keep':>9}  {'min keep':>8}  {'max keep':>8}  "
                  f"{'saturated':>9}  {'floored':>7}")
            for row in a.layer_summary():
                saturated = f"{row['saturated']}/{row['units']}"
                floored = f"{row['floored']}/{row['units']}"
                print(f"{row['layer']:>5}  {row['keep_ratio_mean']:>9.4f}  "
                      f"{row['keep_ratio_min']:>8.4f}  {row['keep_ratio_max']:>8.4f}  "
                      f"{saturated:>9}  {floored:>7}")


def _plot(allocations: list[Allocation], source: _Source, path: str) -> Path:
    """Keep-ratio heatmap (layers x units) and histogram, one row per select value."""
    # Lazy: matplotlib is slow to import. Figure without pyplot needs no backend switch.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = len(allocations)
    fig = Figure(figsize=(11, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, width_ratios=(3, 2))
    for (heat, hist), a in zip(axes, allocations, strict=True):
        ratios = a.keep_ratios.numpy()
        image = heat.imshow(ratios, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis",
                            interpolation="nearest")
        heat.set_title(f"select {a.select:g}: keep ratio per unit")
        heat.set_xlabel(f"{source.unit} unit")
        heat.set_ylabel("layer")
        heat.xaxis.set_major_locator(MaxNLocator(integer=True))
        heat.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=heat)
        n = a.n_blocks
        # One bar per possible count k / N when there are few; 50 equal bins otherwise.
        bins = (np.arange(n + 2) - 0.5) / n if n <= 64 else np.linspace(0.0, 1.0, 51)
        hist.hist(ratios.ravel(), bins=bins)
        hist.axvline(a.select, color="k", linestyle="--", label=f"select {a.select:g}")
        hist.axvline(a.realised_keep_ratio, color="r", linestyle=":",
                     label=f"realised {a.realised_keep_ratio:.4f}")
        hist.set_xlabel("keep ratio")
        hist.set_ylabel("units")
        hist.legend(loc="upper right", fontsize="small")
    fig.suptitle(f"{source.label}, N = {allocations[0].n_blocks}")
    save_plot(lambda tmp: fig.savefig(tmp, dpi=100), path)  # an OS error: one line (_io)
    return Path(path)
