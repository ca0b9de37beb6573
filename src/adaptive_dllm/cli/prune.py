"""``adllm prune``: prune the most / least / random heads of an importance file and evaluate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive_dllm.cli.importance import add_model_args, floats, layer_range, load_model, out_stream
from adaptive_dllm.errors import AdllmError

EPILOG = """\
A pruned head's attention output is multiplied by 0 before the output projection. Heads are
ranked by the file's scores (higher = more important); "random" is repeated over --seeds seeds
and reported as mean and standard deviation. Global selection never empties a layer (the next
head is taken instead) unless --allow-empty-layer.

The default metric is the masked-token NLL (bits per token; bits per byte for the bundled model)
on held-out text (default: the model directory's heldout.txt) at --mask-ratios, with the same
masks for every pruning. --task-cmd runs a command instead: {gates} in it is replaced by the path
of a JSON file {"gates": [[...]], "pruned": [[layer, head], ...]} (also in $ADLLM_HEAD_GATES) and
its last stdout line must be a number or a JSON object of numbers.

examples:
  adllm prune --importance headig.safetensors --fraction 0.25
  adllm prune --importance headig.safetensors --k 4 --scope per-layer --seeds 10 --json
  adllm prune --importance headig.safetensors --fraction 0.1 --which most,least \\
      --task-cmd "python my_eval.py --gates {gates}"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune",
        help="prune most / least / random heads and evaluate",
        description="Head-pruning test of an importance file: zero the most, least or random k "
                    "heads and measure held-out NLL (or a task command).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--importance", required=True, type=Path, help="head-importance .safetensors file")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--k", type=int, default=None,
                       help="heads to prune (per layer with --scope per-layer)")
    count.add_argument("--fraction", type=float, default=None,
                       help="fraction of the heads to prune (default 0.25)")
    p.add_argument("--scope", default="global", choices=("global", "per-layer"))
    p.add_argument("--which", default="most,least,random", help="comma-separated: most, least, random")
    p.add_argument("--seeds", type=int, default=5, help="random prunings: seeds 0..N-1 (default 5)")
    p.add_argument("--layers", default=None, help="candidate layers FIRST:LAST (default all)")
    p.add_argument("--allow-empty-layer", action="store_true", help="allow pruning every head of a layer")
    add_model_args(p)
    m = p.add_argument_group("metric")
    m.add_argument("--task-cmd", default=None, help="evaluate with this command instead of NLL")
    m.add_argument("--text", type=Path, default=None,
                   help="held-out text for the NLL (default: heldout.txt of the model directory)")
    m.add_argument("--length", type=int, default=None, help="passage length (default min(1024, max))")
    m.add_argument("--max-passages", type=int, default=None, help="score only the first N passages")
    m.add_argument("--mask-ratios", default="0.15,0.5,0.9", help="NLL mask ratios (default 0.15,0.5,0.9)")
    m.add_argument("--nll-seed", type=int, default=0, help="NLL mask seed (default 0)")
    m.add_argument("--batch-size", type=int, default=8, help="passages per forward (default 8)")
    p.add_argument("--out", type=Path, default=None, help="also write the full report as JSON here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance
    from adaptive_dllm.importance.pruning import (
        WHICH,
        command_evaluator,
        prune_gates,
        pruning_test,
    )

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    bad = [w for w in which if w not in WHICH]
    if bad or not which:
        raise AdllmError(f"--which {args.which!r}: choose from {', '.join(WHICH)}")
    if args.seeds < 1:
        raise AdllmError(f"--seeds {args.seeds} must be at least 1")
    imp = HeadImportance.load(args.importance)
    fraction = args.fraction if args.fraction is not None or args.k is not None else 0.25
    scope = args.scope.replace("-", "_")
    options = dict(k=args.k, fraction=fraction, scope=scope, layers=layer_range(args.layers),
                   keep_one_per_layer=not args.allow_empty_layer)
    prune_gates(imp, "most", **options)  # validate the selection before loading anything big
    say = out_stream(args)

    if args.task_cmd is not None:
        evaluate = command_evaluator(args.task_cmd)
        primary = None
        metric_info = {"task_cmd": args.task_cmd}
    else:
        evaluate, metric_info = _nll(args, imp)
        primary = "nll_mean"

    def on_run(r) -> None:  # noqa: ANN001
        shown = r.metrics if primary is None else {primary: r.metrics[primary]}
        seed = "" if r.seed is None else f" seed {r.seed}"
        print(f"  {r.which}{seed}: {r.n_pruned} heads pruned -> "
              + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), file=say, flush=True)

    print(f"pruning {imp.metadata.get('estimator')} importance: "
          f"{'k=' + str(args.k) if args.k is not None else f'fraction {fraction:g}'} {scope}", file=say)
    report = pruning_test(imp, evaluate, which=which, seeds=range(args.seeds), on_run=on_run, **options)
    report.settings["metric"] = metric_info
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    print(f"{'metric':<12} {'baseline':>9} {'most':>9} {'least':>9} {'random':>17}")
    for metric, row in report.summary().items():
        cells = [f"{row.get(c, float('nan')):>9.4f}" for c in ("baseline", "most", "least")]
        rand = (f"{row['random_mean']:.4f} ± {row['random_std']:.4f}" if "random_mean" in row else "")
        print(f"{metric:<12} {' '.join(cells)} {rand:>17}")
    return 0


def _nll(args: argparse.Namespace, imp) -> tuple:  # noqa: ANN001
    from adaptive_dllm.evaluation.data import split_passages
    from adaptive_dllm.importance.pruning import nll_evaluator

    model, tok = load_model(args)
    imp.validate_for(model.config)
    directory = Path(model.source)
    text_path = args.text if args.text is not None else directory / "heldout.txt"
    if not text_path.is_file():
        raise AdllmError(f"held-out text {str(text_path)!r} not found; pass --text FILE")
    if tok is None:
        raise AdllmError(f"model {str(directory)!r} has no tokenizer; use --task-cmd")
    length = args.length or min(1024, model.config.max_seq_len)
    passages = split_passages(tok.encode(text_path.read_text(encoding="utf-8"), add_special_tokens=False),
                              length)
    if args.max_passages is not None:
        passages = passages[: args.max_passages]
    ratios = floats(args.mask_ratios, "--mask-ratios")
    info = {"nll_text": str(text_path), "passages": int(passages.shape[0]), "length": length,
            "mask_ratios": list(ratios), "nll_seed": args.nll_seed}
    return nll_evaluator(model, passages, mask_ratios=ratios, seed=args.nll_seed,
                         batch_size=args.batch_size), info
