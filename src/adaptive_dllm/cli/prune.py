"""``adllm prune``: prune the most / least / random heads of an importance file and evaluate."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptive_dllm.cli.arguments import (
    add_model_args,
    add_quiet,
    load_model,
    out_stream,
    positive_int,
    refuse_unused,
    seed,
)
from adaptive_dllm.cli.lists import floats, layer_range
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


#: The NLL metric's options and their defaults (None: resolved from the model); each is refused
#: with --task-cmd, which replaces the metric, rather than silently ignored.
NLL_OPTIONS: dict[str, Any] = {"text": None, "length": None, "max_passages": None,
                               "mask_ratios": "0.15,0.5,0.9", "nll_seed": 0, "batch_size": 8}


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
    count.add_argument("--k", type=positive_int, default=None,
                       help="heads to prune (per layer with --scope per-layer)")
    count.add_argument("--fraction", type=float, default=None,
                       help="fraction of the heads to prune (default 0.25)")
    p.add_argument("--scope", default="global", choices=("global", "per-layer"))
    p.add_argument("--which", default="most,least,random", help="comma-separated: most, least, random")
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="random prunings: seeds 0..N-1 (default 5; with 1 the spread is null)")
    p.add_argument("--layers", default=None, help="candidate layers FIRST:LAST (default all)")
    p.add_argument("--allow-empty-layer", action="store_true", help="allow pruning every head of a layer")
    add_model_args(p)
    m = p.add_argument_group("metric")
    m.add_argument("--task-cmd", default=None, help="evaluate with this command instead of NLL")
    m.add_argument("--text", type=Path, default=None,
                   help="held-out text for the NLL (default: heldout.txt of the model directory)")
    m.add_argument("--length", type=positive_int, default=None,
                   help="passage length (default min(1024, the model's maximum))")
    m.add_argument("--max-passages", type=positive_int, default=None,
                   help="score only the first N passages")
    m.add_argument("--mask-ratios", default=None,
                   help=f"NLL mask ratios (default {NLL_OPTIONS['mask_ratios']})")
    m.add_argument("--nll-seed", type=seed, default=None,
                   help=f"NLL mask seed (default {NLL_OPTIONS['nll_seed']})")
    m.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"passages per forward (default {NLL_OPTIONS['batch_size']})")
    p.add_argument("--out", type=Path, default=None, help="also write the full report as JSON here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptive_dllm._io import check_output_path, dumps_json, read_text_input, write_json
    from adaptive_dllm._progress import progress_bar
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
    if args.out is not None:  # before any work: never overwrite an input, never fail at the end
        check_output_path(args.out, inputs=[args.importance, args.text])
    if args.task_cmd is not None:  # the options' parser defaults are None: any value is given
        refuse_unused(args, dict.fromkeys(NLL_OPTIONS),
                      why="for the NLL metric, which --task-cmd replaces",
                      instead="drop --task-cmd")
    for name, default in NLL_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.text is not None and args.task_cmd is None:
        read_text_input(args.text)  # fail on a bad path before loading a large model
    floats(args.mask_ratios, "--mask-ratios")
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
    runs = 1 + sum(args.seeds if w == "random" else 1 for w in which)
    bar = progress_bar(runs, desc="prune", unit="run", enabled=not args.quiet)

    def counted(gates):  # noqa: ANN001, ANN202
        metrics = evaluate(gates)
        bar.update(1)
        return metrics

    def on_run(r) -> None:  # noqa: ANN001
        shown = r.metrics if primary is None else {primary: r.metrics[primary]}
        seed = "" if r.seed is None else f" seed {r.seed}"
        print(f"  {r.which}{seed}: {r.n_pruned} heads pruned -> "
              + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), file=say, flush=True)

    print(f"pruning {imp.metadata.get('estimator')} importance: "
          f"{'k=' + str(args.k) if args.k is not None else f'fraction {fraction:g}'} {scope}", file=say)
    with bar:
        report = pruning_test(imp, counted, which=which, seeds=range(args.seeds), on_run=on_run,
                              **options)
    report.settings["metric"] = metric_info
    record = _record(report)
    if args.out is not None:
        write_json(args.out, record)
    if args.json:
        print(dumps_json(record, indent=1))
        return 0
    print(f"{'metric':<12} {'baseline':>9} {'most':>9} {'least':>9} {'random':>17}")
    for metric, row in report.summary().items():
        cells = [f"{row.get(c, float('nan')):>9.4f}" for c in ("baseline", "most", "least")]
        rand = ""
        if "random_mean" in row:
            std = row["random_std"]
            rand = f"{row['random_mean']:.4f} ± {std:.4f}" if math.isfinite(std) else \
                f"{row['random_mean']:.4f} (1 seed)"
        print(f"{metric:<12} {' '.join(cells)} {rand:>17}")
    if args.out is not None:
        print(f"report written to {args.out}", file=sys.stderr)
    return 0


def _record(report: Any) -> dict[str, Any]:
    """The report as a dict for strict JSON: a spread of one random seed is null, with why."""
    record = report.to_dict()
    for row in record["summary"].values():
        std = row.get("random_std")
        if std is not None and not math.isfinite(std):
            row["random_std"] = None
            row["random_std_reason"] = "one random seed: no spread (use --seeds 2 or more)"
    return record


def _nll(args: argparse.Namespace, imp) -> tuple:  # noqa: ANN001
    from adaptive_dllm._io import read_text_input
    from adaptive_dllm.evaluation.data import split_passages
    from adaptive_dllm.importance.pruning import gated_evaluator
    from adaptive_dllm.models.checkpoints import record_path
    from adaptive_dllm.models.tokenizer import encode_text

    model, tok = load_model(args)
    imp.validate_for(model.config)
    directory = Path(model.source)
    text_path = args.text if args.text is not None else directory / "heldout.txt"
    if args.text is None and not text_path.is_file():
        raise AdllmError(f"model {str(directory)!r} ships no heldout.txt; pass --text FILE")
    if tok is None:
        raise AdllmError(f"model {str(directory)!r} has no tokenizer; use --task-cmd")
    length = args.length if args.length is not None else min(1024, model.config.max_seq_len)
    if length > model.config.max_seq_len:
        raise AdllmError(f"--length {length} must be at most {model.config.max_seq_len} for this model")
    text = read_text_input(text_path)
    passages = split_passages(encode_text(tok, text, source=str(text_path)), length)
    if args.max_passages is not None:
        passages = passages[: args.max_passages]
    ratios = floats(args.mask_ratios, "--mask-ratios")
    info = {"nll_text": record_path(text_path), "passages": int(passages.shape[0]), "length": length,
            "mask_ratios": list(ratios), "nll_seed": args.nll_seed}
    metric = nll_metric(passages, ratios, seed=args.nll_seed, batch_size=args.batch_size)
    return gated_evaluator(model, metric), info


def nll_metric(passages: Any, mask_ratios: Any, *, seed: int, batch_size: int
               ) -> Callable[[Any], dict[str, float]]:
    """model -> held-out masked-token NLL (bits per token) at each ratio (``nll@R``) and their
    mean (``nll_mean``), with the same seeded masks for every model it scores."""
    from adaptive_dllm.evaluation.likelihood import masked_nll

    def score(model: Any) -> dict[str, float]:
        results = masked_nll(model, passages, mask_ratios, seed=seed, batch_size=batch_size)
        out = {f"nll@{r.mask_ratio:g}": r.bits_per_token for r in results}
        out["nll_mean"] = sum(out.values()) / len(out)
        return out

    return score
