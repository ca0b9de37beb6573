"""``adllm importance estimate``: HeadIG, attention statistics, uniform and random importance.

HeadIG runs long, so it prints its pass count first, then a measured time estimate after the
first example, and progress lines on stderr (``--quiet`` turns them off). Its partial results
are saved after every example to a resume file next to ``--out`` (``OUT.resume.pt``; another
path with ``--resume``, none with ``--no-resume``), so an interrupted run continues where it
stopped; the default resume file is deleted once the result is written.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from adaptive_dllm._io import check_output_path, dumps_json
from adaptive_dllm.cli.arguments import (
    add_model_args,
    add_quiet,
    load_model,
    out_stream,
    positive_int,
    refuse_unused,
    seed,
)
from adaptive_dllm.cli.importance_files import check_artifact_out
from adaptive_dllm.cli.lists import floats, layer_range
from adaptive_dllm.errors import AdllmError

STAT_METHODS = ("entropy", "effective", "topk", "coverage", "deficit")
METHODS = ("headig", *STAT_METHODS, "uniform", "random")
DISTRIBUTIONS = ("uniform", "normal", "exponential")

ESTIMATE_EPILOG = """\
methods:
  headig     integrated gradients of the masked-token loss w.r.t. per-head output gates
             (STP or DP path); |ratios| x S x K x P forward+backward passes per example
             (x layers with --per-layer)
  entropy    normalised entropy of each head's block-level attention (one forward per example)
  effective  effective number of key blocks exp(entropy), as a fraction of the blocks
  topk       1 - attention mass in the top --top-frac of the key blocks
  coverage   fraction of key blocks needed to reach --coverage of the attention mass
  deficit    attention mass lost at a uniform budget of --select
  uniform    all heads equal (no data needed)
  random     seeded scores from --distribution uniform U[0,1), normal N(0,1) or exponential
             Exp(1) (no data needed)
Every file stores higher = more important, with the settings and data in its metadata.

examples:
  # bundled model, HeadIG (STP) on held-out Shakespeare: 8 passages of 256 bytes, 192
  # passes, about 2 CPU-minutes (1-1.5 min on 2 idle cores); resumable (headig.safetensors.resume.pt)
  adllm importance estimate --method headig --data ../shared/data/shakespeare/tempest_gut.txt \\
      --text-offset 32768 --text-length 256 --n 8 --steps 4 --path-samples 2 \\
      --mask-samples 1 --mask-ratios 0.3,0.6,0.9 --out headig.safetensors
  # LLaDA-8B on GSM8K (full rationale), 50 examples
  adllm importance estimate --method headig --model path/to/LLaDA-8B-Instruct \\
      --data gsm8k/test.jsonl --answer-mode full --chat --n 50 --max-length 2048 \\
      --out llada_headig.safetensors
  # HeadIG of each layer on its own (other layers' gates held at 1)
  adllm importance estimate --method headig --per-layer --data texts/ --n 8 --out per_layer.safetensors
  adllm importance estimate --method entropy --data text_dir/ --block-size 64 --out entropy.safetensors
  adllm importance estimate --method random --distribution exponential --seed 3 --out random3.safetensors
"""


def register_estimate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="estimate head importance and save it",
                       description="Estimate per-head importance and write a .safetensors file.",
                       epilog=ESTIMATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="entropy", choices=METHODS,
                   help="default entropy: with global budgets the best rule on the retrieval "
                        "task at 4k/8k and on NLL (docs/fidelity.md)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--seed", type=seed, default=0,
                   help="estimator seed: masks, STP thresholds, random (default 0)")
    distribution = p.add_argument("--distribution", default="uniform", choices=DISTRIBUTIONS,
                                  help="random: score distribution (default uniform)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_quiet(p)
    add_model_args(p)
    data = _add_data_args(p)
    s = p.add_argument_group("attention statistics")
    s.add_argument("--block-size", type=int, default=64, help="key/query block size (default 64)")
    s.add_argument("--mask-ratio", type=float, default=0.8,
                   help="completion fraction masked, the switch-step state (default 0.8)")
    s.add_argument("--queries", default="all", choices=("all", "completion"))
    one_statistic = [
        (s.add_argument("--top-frac", type=float, default=0.1,
                        help="topk: fraction of blocks (default 0.1)"), "topk"),
        (s.add_argument("--coverage", type=float, default=0.9,
                        help="coverage: mass target (default 0.9)"), "coverage"),
        (s.add_argument("--select", type=float, default=0.3,
                        help="deficit: uniform keep ratio (default 0.3)"), "deficit")]
    h = _add_headig_args(p)
    p.set_defaults(importance_func=run_estimate, method_options=_method_options(
        [(data._group_actions, ("headig", *STAT_METHODS)), (s._group_actions, STAT_METHODS),
         *(([action], (method,)) for action, method in one_statistic),
         (h._group_actions, ("headig",)), ([distribution], ("random",))]))


def _method_options(groups: list[tuple[list[argparse.Action], tuple[str, ...]]]
                    ) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """dest -> (default, the methods that read it), for refusing options a method ignores; a
    later group overrides an earlier one (a statistic's own option within its group)."""
    return {a.dest: (a.default, methods) for actions, methods in groups for a in actions}


def _check_method_options(args: argparse.Namespace) -> None:
    """An option the chosen method never reads is an error, not silently dropped."""
    refuse_unused(args, {dest: default for dest, (default, methods) in args.method_options.items()
                         if args.method not in methods},
                  why=f"not used by --method {args.method}", instead="choose another --method")


def _add_data_args(p: argparse.ArgumentParser) -> Any:
    d = p.add_argument_group("calibration data")
    d.add_argument("--data", nargs="+", metavar="PATH",
                   help="GSM8K or prompt/completion JSONL, or text files / folders of *.txt")
    d.add_argument("--data-kind", default="auto",
                   choices=("auto", "gsm8k", "humaneval", "choice", "jsonl", "text"))
    d.add_argument("--n", type=int, default=None, help="examples to use (default: all)")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the example subset (default 0)")
    d.add_argument("--no-shuffle", action="store_true", help="take the first --n examples in order")
    d.add_argument("--answer-mode", default="final", choices=("final", "full"),
                   help="GSM8K completion: final answer or full rationale (default final)")
    d.add_argument("--prompt-key", default="prompt")
    d.add_argument("--completion-key", default="completion")
    d.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    d.add_argument("--max-length", type=positive_int, default=None, help="truncate JSONL examples (tokens)")
    d.add_argument("--text-length", type=positive_int, default=None,
                   help="text passage length in tokens (default: min(1024, model maximum))")
    d.add_argument("--text-offset", type=int, default=0, help="first token of each text file used")
    d.add_argument("--text-limit", type=positive_int, default=None, help="tokens of each text file used")
    d.add_argument("--span", default="all", choices=("all", "second_half"),
                   help="text completion span: the whole passage or its second half (default all)")
    return d


def _add_headig_args(p: argparse.ArgumentParser) -> Any:
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
    h.add_argument("--layers", default=None,
                   help="attributed layers FIRST:LAST or one layer L (default all)")
    h.add_argument("--per-layer", action="store_true",
                   help="one HeadIG run per attributed layer, the others' gates held at 1 "
                        "(costs one run per layer)")
    h.add_argument("--mask-batch-size", type=int, default=10, help="mask variants per forward")
    h.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing (default: on above 1B parameters)")
    h.add_argument("--resume", type=Path, default=None,
                   help="partial-results file, written after every example and resumed from if "
                        "present (default: OUT.resume.pt next to --out)")
    h.add_argument("--no-resume", action="store_true", help="keep no partial-results file")
    return h


def _calibration(args: argparse.Namespace, model: Any, tok: Any) -> Any:
    from adaptive_dllm.importance.calibration import load_calibration

    length = args.text_length or min(1024, model.config.max_seq_len)
    return load_calibration(
        args.data, tok, kind=args.data_kind, n=args.n, data_seed=args.data_seed,
        shuffle=not args.no_shuffle, answer_mode=args.answer_mode, prompt_key=args.prompt_key,
        completion_key=args.completion_key, chat=args.chat, max_length=args.max_length,
        text_length=length, text_offset=args.text_offset, text_limit=args.text_limit, span=args.span,
    )


def _check_paths(args: argparse.Namespace) -> Path | None:
    """Validate --out (and the resume file) before any work; return the resume path."""
    inputs = [*(args.data or []), args.model]
    check_artifact_out(args.out, inputs=inputs)
    if args.method != "headig":
        return None
    if args.no_resume and args.resume is not None:
        raise AdllmError("--resume and --no-resume contradict each other; pass one of them")
    if args.no_resume:
        return None
    resume = args.resume or args.out.with_name(args.out.name + ".resume.pt")
    return check_output_path(resume, flag="--resume", inputs=[*inputs, args.out])


def run_estimate(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import estimators

    _check_method_options(args)
    resume = _check_paths(args)
    say = out_stream(args)
    progress = not args.quiet
    if args.method in ("uniform", "random"):
        from adaptive_dllm.models.checkpoints import read_config

        config, _ = read_config(args.model)
        imp = (estimators.uniform_importance(config) if args.method == "uniform" else
               estimators.random_importance(config, seed=args.seed, distribution=args.distribution))
    else:
        if not args.data:
            raise AdllmError(f"--method {args.method} needs calibration data: pass --data PATH")
        settings = _headig_settings(args) if args.method == "headig" else None
        from adaptive_dllm.cli.arguments import join_ranks

        ranks = join_ranks(args) if args.method == "headig" else None
        if ranks is not None and not ranks.is_main:
            say, progress = io.StringIO(), False  # rank 0 alone reports and writes
        model, tok = load_model(args)
        data = _calibration(args, model, tok)
        print(f"calibration: {len(data)} example(s), {data.description['tokens']} tokens "
              f"({data.description['kind']})", file=say)
        if args.method == "headig":
            imp = _run_headig(args, model, data, settings, resume, say=say, progress=progress,
                              ranks=ranks)
            if not ranks.is_main:
                return 0
        else:
            imp = estimators.attention_statistics(
                model, data, block_size=args.block_size, mask_ratio=args.mask_ratio,
                queries=args.queries, top_frac=args.top_frac, coverage=args.coverage,
                select=args.select, seed=args.seed, progress=progress)[args.method]
    path = imp.save(args.out)
    if resume is not None and args.resume is None:
        _remove_resume_files(resume, imp)
    print(f"wrote {path} ({imp.n_layers} layers x {imp.n_heads} {imp.head_kind} heads, "
          f"estimator {imp.metadata['estimator']})", file=say)
    if args.json:
        print(dumps_json({"path": str(path), "metadata": imp.metadata}, indent=1))
    return 0


def _run_headig(args: argparse.Namespace, model: Any, data: Any, settings: Any,
                resume: Path | None, *, say: Any, progress: bool, ranks: Any) -> Any:
    from adaptive_dllm.importance.headig import describe_cost, headig

    cost = describe_cost(settings, len(data))
    if args.per_layer:
        n = len(settings.layer_range(model.config.n_layers))
        cost += f"; --per-layer: {n} runs like this"
    print(cost, file=say, flush=True)
    if resume is not None:
        print(f"partial results saved to {resume} after every example (resumed from if present)",
              file=say, flush=True)
    imp = headig(model, data, settings, checkpointing=args.checkpointing, resume=resume,
                 progress=progress, ranks=ranks, per_layer=args.per_layer)
    for part in imp.metadata.get("per_layer", [{"layer": None, **imp.metadata}]):
        c = part["completeness"]
        where = "" if part["layer"] is None else f"layer {part['layer']} "
        print(f"{where}completeness: sum IG {c['ig_sum_mean']:.5g} vs J(1) - J(baseline) "
              f"{c['j_full_mean'] - c['j_baseline_mean']:.5g} (mean relative gap "
              f"{_pct(c['rel_gap_mean'])}, max {_pct(c['rel_gap_max'])})", file=say)
    return imp


def _remove_resume_files(resume: Path, imp: Any) -> None:
    """The default resume file(s) served their purpose once the result is written."""
    from adaptive_dllm.importance.headig import layer_resume_path

    layers = [p["layer"] for p in imp.metadata.get("per_layer", [])]
    for path in [layer_resume_path(resume, layer) for layer in layers] or [resume]:
        path.unlink(missing_ok=True)


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
