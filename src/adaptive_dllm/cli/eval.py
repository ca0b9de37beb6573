"""``adllm eval``: evaluate a model.

Subcommands: ``nll`` (held-out masked-token likelihood) and ``fidelity`` (dense vs uniform vs
adaptive block-sparse attention: likelihood and generation fidelity per select).

Each subcommand has a ``_register_<name>(sub)`` that adds its parser and sets ``eval_func``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from adaptive_dllm.cli.arguments import (
    add_model_args,
    add_quiet,
    add_sampler_args,
    add_sparse_args,
    check_steps,
    load_model,
    non_negative_int,
    positive_int,
    seed,
)
from adaptive_dllm.cli.lists import floats
from adaptive_dllm.cli.plots import check_plot, save_plot
from adaptive_dllm.errors import AdllmError

NLL_EPILOG = """\
The text is cut into passages of --length tokens; in each passage exactly
floor(r * n + 0.5) positions (r = mask ratio, n = maskable positions) are masked
in one forward pass, chosen by a permutation seeded with --seed, and the mean
-log2 p(true token) over masked positions is reported (bits per byte for the
bundled byte-level model). The defaults reproduce the bundled model's card.

examples:
  adllm eval nll                                   # bundled model, its held-out text
  adllm eval nll --mask-ratios 0.5 --json
  adllm eval nll --model path/to/ckpt --text held_out.txt --length 512
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (held-out likelihood, sparse-attention fidelity)",
        description="Evaluate a model. Run `adllm eval SUBCOMMAND --help` for details.",
        epilog="examples:\n"
               "  adllm eval nll                     # reproduces the bundled model card\n"
               "  adllm eval fidelity --select 0.1,0.2,0.3,0.5 --modes dense,uniform,adaptive "
               "--block-size 32 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    _register_nll(sub)
    _register_fidelity(sub)
    from adaptive_dllm.cli.eval_task import register_lm_eval, register_task

    register_task(sub)
    register_lm_eval(sub)
    parser.set_defaults(func=run, eval_parser=parser)


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "eval_func", None)
    if func is None:
        args.eval_parser.print_help(sys.stderr)
        return 2
    return func(args)


def _float_list(flag: str, text: str) -> tuple[float, ...]:
    """Comma-separated ratios in (0, 1], checked before any model is loaded."""
    values = floats(text, flag)
    if any(not 0.0 < v <= 1.0 for v in values):
        raise AdllmError(f"{flag} {text!r}: each value must be in (0, 1]")
    return values


def _register_nll(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nll",
        help="masked-token NLL (bits per token) on held-out text",
        description="Masked-token negative log-likelihood of a diffusion LM at fixed mask ratios.",
        epilog=NLL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--text", type=Path, default=None,
                   help="text file to score (default: heldout.txt of the model directory); "
                        "UTF-8, or any bytes for the byte-level model")
    p.add_argument("--mask-ratios", default="0.15,0.5,0.9", metavar="R[,R...]",
                   help="comma-separated mask ratios in (0, 1] (default: 0.15,0.5,0.9)")
    p.add_argument("--seed", type=seed, default=0, help="mask seed (default: 0)")
    p.add_argument("--length", type=positive_int, default=None,
                   help="passage length in tokens (default: min(1024, the model's maximum))")
    p.add_argument("--max-passages", type=positive_int, default=None,
                   help="score only the first N passages (with 1, stderr is null)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="passages per forward (default: 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_quiet(p)
    p.set_defaults(eval_func=run_nll)


def run_nll(args: argparse.Namespace) -> int:
    from adaptive_dllm._io import dumps_json
    from adaptive_dllm.evaluation.likelihood import masked_nll
    from adaptive_dllm.models.checkpoints import record_path
    from adaptive_dllm.models.tokenizer import ByteTokenizer

    ratios = _float_list("--mask-ratios", args.mask_ratios)
    if args.text is not None:
        _read_text(args.text)  # fail on a bad path before loading a large model
    model, tok, passages, text_path, length = _model_and_passages(args)
    directory = Path(model.source)
    if args.max_passages is not None:
        passages = passages[: args.max_passages]
    results = masked_nll(model, passages, ratios, seed=args.seed, batch_size=args.batch_size,
                         progress=not args.quiet)
    unit = "byte" if isinstance(tok, ByteTokenizer) else "token"
    param = next(model.parameters())
    if args.json:
        print(dumps_json(_explain_nulls({
            "model": record_path(directory), "text": record_path(text_path), "unit": unit,
            "device": str(param.device), "dtype": str(param.dtype).removeprefix("torch."),
            "results": [r.to_dict() for r in results],
        }), indent=1))
        return 0
    print(f"model {directory}")
    print(f"text  {text_path}: {passages.shape[0]} passages of {passages.shape[1]} {unit}s, "
          f"seed {args.seed}, {param.device} {str(param.dtype).removeprefix('torch.')}")
    print(f"{'mask ratio':>10}  {'bits/' + unit:>10}  {'stderr':>7}  {'masked':>8}")
    for r in results:
        print(f"{r.mask_ratio:>10g}  {r.bits_per_token:>10.4f}  {r.stderr:>7.4f}  {r.n_masked:>8}")
    return 0


def _explain_nulls(record: Any) -> Any:
    """Strict-JSON copy of ``record`` in which a non-finite ``stderr`` is null with a
    ``stderr_reason`` (one passage has no passage-to-passage spread)."""
    from adaptive_dllm._io import to_jsonable

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: walk(v) for k, v in value.items()}
            if "stderr" in out and out["stderr"] is None:
                out["stderr_reason"] = "one passage: no spread to estimate (score 2 or more)"
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(to_jsonable(record))


def _model_and_passages(args: argparse.Namespace) -> tuple[Any, Any, Any, Path, int]:
    """Load the model and cut the evaluation text (default: the model's heldout.txt) into
    (n, length) token passages; shared by ``nll`` and ``fidelity``."""
    from adaptive_dllm.evaluation.data import split_passages
    from adaptive_dllm.models.tokenizer import encode_text

    model, tok = load_model(args)
    directory = Path(model.source)
    if tok is None:
        raise AdllmError(f"model {str(directory)!r} has no tokenizer; it cannot read a text file")
    length = args.length if args.length is not None else min(1024, model.config.max_seq_len)
    if not 1 <= length <= model.config.max_seq_len:
        raise AdllmError(f"--length {length} must be in [1, {model.config.max_seq_len}] for this model")
    text_path = args.text if args.text is not None else directory / "heldout.txt"
    if args.text is None and not text_path.is_file():
        raise AdllmError(f"model {str(directory)!r} ships no heldout.txt; pass --text FILE")
    passages = split_passages(encode_text(tok, _read_text(text_path), source=str(text_path)),
                              length)
    return model, tok, passages, Path(text_path), length


def _read_text(path: Path) -> str:
    from adaptive_dllm._io import read_text_input

    return read_text_input(path, flag="--text")


FIDELITY_EPILOG = """\
For each mode and select value, on held-out passages of --text (default: the
model's heldout.txt, cut into passages of --length tokens):
  likelihood  masked-token NLL at each --mask-ratios (same seeded masks in every
              row; sparse rows build a plan from every forward's own q/k),
              and its difference to dense;
  generation  --prompts prompts (the first --prompt-length tokens of passages)
              generate --gen-length tokens greedily, dense and sparse (dense for
              the first --skip of the steps, then the plan): token agreement
              with dense, mean KL(dense || sparse) of the final-step logits
              (KL final) and of the logits that committed each token (KL commit);
  keep        realised keep ratio of the plans that ran (1 = dense).
Sparse attention is forced (flex on CUDA, else the gather kernel: on the CPU
or a block size flex does not run): backend=auto would run dense there. Evaluation passages and
prompts are even-numbered passages; adaptive importance, unless --importance is
given, is estimated with an attention statistic on odd-numbered ones.

examples:
  adllm eval fidelity                                  # bundled model, defaults
  adllm eval fidelity --select 0.1,0.3 --modes dense,uniform --passages 2 --prompts 1
  adllm eval fidelity --importance headig.safetensors --json --plot fidelity.png
"""




def _register_fidelity(sub: argparse._SubParsersAction) -> None:
    from adaptive_dllm.evaluation.fidelity import MODES, STATISTIC_METHODS, FidelitySettings

    d = FidelitySettings()
    p = sub.add_parser(
        "fidelity",
        help="dense vs uniform vs adaptive sparse attention: NLL, token agreement, KL",
        description="Fidelity of block-sparse attention to dense attention on held-out text.",
        epilog=FIDELITY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--text", type=Path, default=None,
                   help="UTF-8 held-out text (default: heldout.txt of the model directory)")
    p.add_argument("--length", type=positive_int, default=None,
                   help="passage length in tokens (default: min(1024, the model's maximum))")
    p.add_argument("--select", default=",".join(f"{v:g}" for v in d.selects), metavar="S[,S...]",
                   help="target keep ratios in (0, 1] (default: %(default)s; 1 = exactness check)")
    p.add_argument("--modes", default=",".join(MODES), metavar="M[,M...]",
                   help="dense, uniform, adaptive (default: all; dense always runs as reference)")
    p.add_argument("--importance-method", default=d.importance_method, choices=STATISTIC_METHODS,
                   help="attention statistic estimated on calibration passages when no "
                        "--importance is given (default: %(default)s)")
    p.add_argument("--calibration", type=positive_int, default=d.calibration, metavar="N",
                   help="calibration passages for the estimated importance (default: %(default)s)")
    p.add_argument("--mask-ratios", default=",".join(f"{r:g}" for r in d.mask_ratios),
                   metavar="R[,R...]", help="likelihood mask ratios (default: %(default)s)")
    p.add_argument("--passages", type=non_negative_int, default=d.passages, metavar="N",
                   help="likelihood passages (default: %(default)s; 0 skips the likelihood part)")
    p.add_argument("--prompts", type=int, default=d.prompts, metavar="N",
                   help="generation prompts (default: %(default)s; 0 skips generation)")
    p.add_argument("--prompt-length", type=int, default=d.prompt_length, metavar="N",
                   help="prompt tokens (default: %(default)s)")
    p.add_argument("--seed", type=seed, default=d.seed,
                   help="mask, sampler and estimator seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="passages per likelihood forward (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="write a plot of quality vs select per mode (png, svg, pdf ...)")
    add_quiet(p)
    add_sampler_args(p, only=("gen_length", "steps", "block_length"),
                     defaults={"gen_length": d.gen_length, "block_length": d.block_length})
    add_sparse_args(p, only=("block_size", "skip", "region", "sparse_backend", "importance"),
                    defaults={"block_size": d.block_size, "skip": d.skip, "region": d.region},
                    backends=("gather", "reference", "flex"),
                    notes={"sparse_backend": "flex on CUDA, else gather",
                           "importance": "estimated, see --importance-method"})
    p.set_defaults(eval_func=run_fidelity)


def run_fidelity(args: argparse.Namespace) -> int:
    import platform
    import time

    import torch

    from adaptive_dllm._io import dumps_json
    from adaptive_dllm.evaluation.fidelity import (
        FidelitySettings,
        evaluate_fidelity,
        format_table,
        plot_fidelity,
    )

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]  # FidelitySettings checks them
    if args.importance is not None and "adaptive" not in modes:
        raise AdllmError("--importance is only used by the adaptive mode (add it to --modes)")
    settings = FidelitySettings(
        selects=_float_list("--select", args.select), modes=tuple(modes),
        block_size=args.block_size, skip=args.skip, region=args.region,
        mask_ratios=_float_list("--mask-ratios", args.mask_ratios),
        backend=args.sparse_backend, passages=args.passages, prompts=args.prompts,
        prompt_length=args.prompt_length, gen_length=args.gen_length, steps=args.steps,
        block_length=args.block_length, calibration=args.calibration,
        importance_method=args.importance_method, seed=args.seed, batch_size=args.batch_size,
    )
    check_steps(args.steps, args.gen_length)
    check_plot(args.plot, inputs=[args.text, args.importance])
    if args.text is not None:
        _read_text(args.text)
    importance = None
    if args.importance is not None:
        from adaptive_dllm.importance.artifact import HeadImportance

        importance = HeadImportance.load(args.importance)
    from adaptive_dllm.cli.arguments import join_ranks
    from adaptive_dllm.models.checkpoints import record_path

    ranks = join_ranks(args)  # torchrun: sparse conditions dealt over ranks, rank 0 reports
    model, tok, passages, text_path, length = _model_and_passages(args)
    directory = Path(model.source)
    report = evaluate_fidelity(model, passages, settings, importance=importance, tokenizer=tok,
                               progress=not args.quiet and ranks.is_main, ranks=ranks)
    if not ranks.is_main:
        return 0
    param = next(model.parameters())
    record = {
        "command": "adllm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None,
        "model": record_path(directory), "text": record_path(text_path),
        "importance_file": args.importance,
        "passage_length": length, "n_text_passages": int(passages.shape[0]),
        "device": str(param.device), "dtype": str(param.dtype).removeprefix("torch."),
        "cpu_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        **report.to_dict(),
    }
    if args.plot is not None:
        save_plot(lambda tmp: plot_fidelity(record, tmp), args.plot)
    if args.json:
        print(dumps_json(_explain_nulls(record), indent=1))
        return 0
    print(f"model {directory}, {record['device']} {record['dtype']}")
    parts = []
    if settings.passages:
        parts.append(f"likelihood on {settings.passages} passages of {length} tokens "
                     f"(mask seed {settings.seed})")
    if settings.prompts:
        parts.append(f"generation from {settings.prompts} prompts of {settings.prompt_length} "
                     f"tokens, {settings.gen_length} generated in {settings.steps} steps")
    print(f"text  {text_path}: {'; '.join(parts)}")
    print(f"sparse: block {settings.block_size}, skip {settings.skip:g}; {report.backend_note}")
    if report.importance is not None:
        print(f"adaptive importance: {report.importance}")
    print(format_table(record))
    if args.plot is not None:
        print(f"plot written to {args.plot}")
    return 0
