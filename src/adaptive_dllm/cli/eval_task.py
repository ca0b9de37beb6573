"""``adllm eval task TASK``: task accuracy of dense vs uniform vs adaptive sparse attention.

Registered by :mod:`adaptive_dllm.cli.eval` (``register_task(sub)``). Runs under ``torchrun``
unchanged: every rank evaluates its share of the items and rank 0 prints and writes.
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
    positive_int,
    sampler_options,
    seed,
)
from adaptive_dllm.errors import AdllmError

EPILOG = """\
One run evaluates every mode x select on the same items and prints one table:
accuracy with a 95% Wilson interval, mean generated tokens, tokens/s (generated
positions per second of generation), forwards per item and the realised keep
ratio. --out FILE.jsonl gets one line per (item, mode, select) as it finishes;
rerunning with the same --out resumes (and refuses if the settings differ).

examples:
  adllm eval task gsm8k --model ~/ckpt/LLaDA-8B-Instruct --limit 4 \\
      --modes dense,uniform --select 0.5 --json
  adllm eval task gsm8k --model ~/ckpt/LLaDA-8B-Instruct --modes dense,uniform,adaptive \\
      --select 0.3 --importance headig.safetensors --gen-length 256 --steps 256 \\
      --block-length 32 --batch-size 8 --out gsm8k.jsonl
  torchrun --nproc-per-node 8 -m adaptive_dllm.cli eval task gsm8k --model DIR \\
      --modes dense,uniform,adaptive --select 0.3 --importance heads.safetensors --out gsm8k.jsonl
  adllm eval task retrieval --model retrieval --length 2048 --limit 16 --json
  adllm eval task humaneval --check-harness --json

Prompts are measured before any generation: one longer than the model allows with
its --gen-length is refused naming the fix; without --shots, GSM8K takes its 5
exemplars or the most that fit (a note on stderr). Progress lines go to stderr
(--quiet: none).
"""

# The shared sampler group's options this command takes (over the task's defaults), plus two
# LLaDA evaluation switches of its own; only options the user gave are passed.
SAMPLER_ONLY = ("steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
                "alg", "alg_temp", "eps", "top_p", "top_k", "cache", "threshold", "fast")
EOS_OPTIONS = ("logits_eos_inf", "confidence_eos_eot_inf")
# CLI dest -> SparseConfig field.
SPARSE_OPTIONS = {"skip": "skip", "block_size": "block_size", "sparse_backend": "backend",
                  "region": "region", "min_keep_ratio": "min_keep_ratio", "refresh": "refresh"}


def register_task(sub: argparse._SubParsersAction) -> None:
    """Add ``adllm eval task`` to the ``adllm eval`` subparsers."""
    p = sub.add_parser("task", help="task accuracy (GSM8K, HumanEval, choice, retrieval) per mode",
                       description="Evaluate a task under dense, uniform and adaptive sparse "
                                   "attention on the same items.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", metavar="TASK", help="gsm8k, humaneval, choice, retrieval")
    add_model_args(p)
    t = p.add_argument_group("task")
    t.add_argument("--data", type=Path, default=None, metavar="FILE",
                   help="local data file (default: the task's bundled data)")
    t.add_argument("--shots", type=int, default=None, metavar="K",
                   help="few-shot examples (gsm8k default: 5, or the most that fit the model)")
    t.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="first N items only")
    t.add_argument("--length", type=positive_int, default=None, metavar="TOKENS",
                   help="retrieval: prompt length in the model's tokens (default 4096)")
    t.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="task-specific option (repeatable), e.g. length=4096")
    t.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="chat template around prompts (default: when the tokenizer has one)")
    t.add_argument("--check-harness", action="store_true",
                   help="check the task's scorer on reference solutions (no model; humaneval)")
    r = p.add_argument_group("run")
    r.add_argument("--modes", default=None, metavar="M[,M...]",
                   help="dense, uniform, adaptive (default: dense,uniform, and adaptive when "
                        "--importance is given)")
    r.add_argument("--select", default="0.3", metavar="S[,S...]",
                   help="keep ratios of the sparse modes (default 0.3)")
    r.add_argument("--batch-size", type=positive_int, default=1, metavar="B",
                   help="items per batch")
    r.add_argument("--samples", type=positive_int, default=1, metavar="N",
                   help="completions per item")
    r.add_argument("--mc-num", type=positive_int, default=None, metavar="N",
                   help="Monte-Carlo samples per log-likelihood (choice tasks; default 128)")
    r.add_argument("--seed", type=seed, default=0,
                   help="base seed (per-item seeds derive from it)")
    r.add_argument("--out", type=Path, default=None, metavar="FILE.jsonl",
                   help="per-item results, resumed when the file exists")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet(p)
    g = add_sampler_args(p, only=SAMPLER_ONLY)
    g.title = "sampler (over the task's defaults)"
    for action in g._group_actions:  # the task sets these three, not the sampler
        if action.dest in ("steps", "gen_length", "block_length") \
                and action.help not in (None, argparse.SUPPRESS):
            action.help = action.help.split(" (default")[0] + " (default: the task's)"
    g.add_argument("--logits-eos-inf", action="store_true", default=None,
                   help="LLaDA: never generate EOS (upstream evaluation option)")
    g.add_argument("--confidence-eos-eot-inf", action="store_true", default=None,
                   help="LLaDA: never commit EOS/EOT by confidence (upstream evaluation option)")
    add_sparse_args(p, only=(*SPARSE_OPTIONS, "importance"), notes={
        "sparse_backend": "flex on CUDA, else gather (CPU or a block size flex lacks): sparse really runs"})
    p.set_defaults(eval_func=run_task)


def run_settings(args: argparse.Namespace) -> Any:
    """The :class:`RunSettings` the flags describe (validated, before any model is loaded)."""
    from adaptive_dllm.cli.lists import floats
    from adaptive_dllm.evaluation.runner import RunSettings

    text = args.modes or ("dense,uniform,adaptive" if args.importance else "dense,uniform")
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    selects = floats(args.select, "--select")
    sampler = {**sampler_options(args),
               **{k: getattr(args, k) for k in EOS_OPTIONS if getattr(args, k) is not None}}
    sparse = {field: getattr(args, dest) for dest, field in SPARSE_OPTIONS.items()
              if getattr(args, dest) is not None}
    return RunSettings(modes=modes, selects=selects, sampler=sampler, sparse=sparse,
                       batch_size=args.batch_size, samples=args.samples, seed=args.seed,
                       chat=args.chat, limit=args.limit,
                       **({} if args.mc_num is None else {"mc_num": args.mc_num}))


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``get_task`` besides the tokenizer (only those the user gave)."""
    options: dict[str, Any] = {"seed": args.seed}
    if args.data is not None:
        if not args.data.is_file():
            raise AdllmError(f"--data {str(args.data)!r} does not exist; pass an existing file")
        options["data"] = args.data
    if args.shots is not None:
        if args.shots < 0:
            raise AdllmError(f"--shots {args.shots} must be >= 0")
        options["shots"] = args.shots
    if args.length is not None:
        options["length"] = args.length
    for text in args.task_option:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise AdllmError(f"--task-option {text!r} must be KEY=VALUE")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_task(args: argparse.Namespace) -> int:
    from adaptive_dllm._io import check_output_path, dumps_json
    from adaptive_dllm.cli.arguments import join_ranks, load_model
    from adaptive_dllm.evaluation.report import format_table
    from adaptive_dllm.evaluation.runner import evaluate_task
    from adaptive_dllm.evaluation.tasks.base import TASKS, check_task_options, get_task

    if args.task not in TASKS:
        raise AdllmError(f"unknown task {args.task!r}; choose one of {', '.join(sorted(TASKS))}")
    options = task_options(args)
    check_task_options(args.task, options)  # e.g. --length for gsm8k: refused before loading
    if args.check_harness:
        return _check_harness(args, get_task(args.task, tokenizer=None, **options))
    settings = run_settings(args)
    if args.gen_length is not None:
        check_steps(args.steps, args.gen_length)
    if args.out is not None:
        args.out = check_output_path(args.out, inputs=(args.data, args.importance))
        if args.out.suffix != ".jsonl":
            raise AdllmError(f"--out {str(args.out)!r} must end in .jsonl")
    importance = None
    if args.importance is not None:
        from adaptive_dllm.importance.artifact import HeadImportance

        importance = HeadImportance.load(args.importance)
    ranks = join_ranks(args)  # torchrun: items sharded over ranks, rank 0 reports
    model, tok = load_model(args)
    if tok is None:
        raise AdllmError(f"model {args.model or 'bundled'!r} has no tokenizer; task {args.task!r} "
                         "needs text prompts: use a checkpoint with a tokenizer.json")
    task = _build_task(args, options, model, tok, settings, quiet=not ranks.is_main)
    if task.kind == "loglikelihood" and (args.fast or args.cache or args.threshold is not None):
        raise AdllmError(f"--fast, --cache and --threshold speed up generation; task {args.task!r} "
                         "scores log-likelihoods and generates nothing: drop them")
    if task.kind == "generate" and args.mc_num is not None:
        raise AdllmError(f"--mc-num {args.mc_num}: task {args.task!r} generates answers and "
                         "scores no log-likelihoods; drop --mc-num")
    report = evaluate_task(model, tok, task, settings, importance=importance, out=args.out,
                           ranks=ranks, progress=ranks.is_main and not args.quiet)
    if not ranks.is_main:
        return 0
    if args.json:
        print(dumps_json(report.to_dict(), indent=1))
        return 0
    print(f"task {report.task}: {report.results[0].n if report.results else 0} items; "
          f"model {report.model}; chat template {'on' if report.settings.get('chat') else 'off'}"
          + (f"; {ranks.world} ranks" if ranks.distributed else ""))
    print(format_table(report))
    if args.out is not None:
        print(f"per-item results in {args.out}")
    return 0


def _build_task(args: argparse.Namespace, options: dict[str, Any], model: Any, tok: Any,
                settings: Any, *, quiet: bool) -> Any:
    """The task; a few-shot task without --shots gets the most shots (up to its default) that
    fit the model's context, with a note on stderr when that is fewer than the default."""
    from adaptive_dllm.evaluation.context import fit_shots
    from adaptive_dllm.evaluation.runner import has_chat_template, task_sampler
    from adaptive_dllm.evaluation.tasks.base import get_task
    from adaptive_dllm.generation.api import make_options

    task = get_task(args.task, tokenizer=tok, **options)
    if task.kind != "generate":
        return task
    sampler = task_sampler(task, settings.sampler)
    gen_length = make_options(model.config.family, **sampler).gen_length
    check_steps(args.steps, gen_length)
    default = task.settings().get("shots")
    if args.shots is not None or not isinstance(default, int) or default == 0:
        return task
    chat = has_chat_template(tok) if settings.chat is None else settings.chat
    fitted = fit_shots(lambda k: get_task(args.task, tokenizer=tok, **options, shots=k), default,
                       tok, limit=settings.limit, max_len=model.config.max_seq_len,
                       gen_length=gen_length, chat=chat)
    shots = fitted.settings().get("shots")
    if shots != default and not quiet:
        print(f"note: {default}-shot prompts + {gen_length} generated tokens exceed the model's "
              f"{model.config.max_seq_len} tokens; using {shots} shots (--shots K to choose)",
              file=sys.stderr)
    return fitted


def _check_harness(args: argparse.Namespace, task: Any) -> int:
    """Score the task's reference solutions instead of a model (``task.check_harness()``)."""
    from adaptive_dllm._io import dumps_json

    check = getattr(task, "check_harness", None)
    if check is None:
        raise AdllmError(f"task {args.task!r} has no harness check; --check-harness is for humaneval")
    result = check(limit=args.limit)
    if args.json:
        print(dumps_json(result, indent=1))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")
    return 0


LM_EVAL_EPILOG = """\
Every argument is passed to lm-eval's own command line (`lm-eval run ...`), with
--model adllm added when no --model is given. model_args of adllm: pretrained=DIR
(default: the bundled model), device, dtype, batch_size, chat, mc_num, the sampler
options (steps, gen_length, block_length, temperature, ...) and the sparse options
(sparse=uniform|adaptive, select, importance=FILE, skip, block_size, sparse_backend).

examples:
  adllm eval lm-eval --tasks gsm8k --model_args pretrained=~/ckpt/LLaDA-8B-Instruct,\\
gen_length=256,steps=256,block_length=32,sparse=adaptive,select=0.3,importance=h.safetensors
  accelerate launch -m adaptive_dllm.cli eval lm-eval --tasks mmlu --model_args pretrained=DIR
"""


def register_lm_eval(sub: argparse._SubParsersAction) -> None:
    """Add ``adllm eval lm-eval`` (lm-eval's arguments passed through)."""
    # prefix_chars="+": every "--flag" is lm-eval's, so argparse must not read any of them.
    p = sub.add_parser("lm-eval", help="EleutherAI lm-evaluation-harness with the adllm model",
                       description="Run lm-eval with the adllm model (pip install "
                                   "'adaptive-dllm[lm-eval]').", prefix_chars="+",
                       epilog=LM_EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="LM_EVAL_ARGS")
    p.set_defaults(eval_func=run_lm_eval)


def run_lm_eval(args: argparse.Namespace) -> int:
    from adaptive_dllm.integrations.lm_eval import run_cli

    return run_cli(list(args.lm_eval_args))
