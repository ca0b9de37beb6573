"""``adllm generate``: sample a continuation of one prompt, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from adaptive_dllm.errors import AdllmError, CheckpointError

EXAMPLES = """\
examples:
  adllm generate "ROMEO:"                                  # the bundled model, default settings
  adllm generate "ROMEO:" --gen-length 64 --steps 32 --seed 0
  adllm generate "What is 2+2?" --model ~/ckpt/LLaDA-8B-Instruct --chat \\
      --gen-length 128 --steps 128 --block-length 32
  adllm generate "Write a haiku." --model ~/ckpt/Dream-v0-Instruct-7B --chat \\
      --alg entropy --temperature 0.2 --top-p 0.95 --json
  adllm generate "ROMEO:" --sparse uniform --select 0.3 --skip 0.2 --block-size 32 --json
  adllm generate "ROMEO:" --sparse adaptive --importance heads.safetensors --select 0.3
  adllm generate "ROMEO:" --cache prefix --threshold 0.9 --json   # K/V cache + parallel decoding
  adllm generate "ROMEO:" --history steps.json --history-gif steps.gif
  adllm generate "31 64 68 121" --ids --model ../shared/reference_fixtures/llada_tiny \\
      --gen-length 16 --block-length 8 --steps 8

Sampler options: LLaDA --remasking --cfg-scale; Dream --alg --alg-temp --eps --top-p
--top-k; both the others (--cache --threshold: docs/cache.md). An option the model's sampler
does not have is an error.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from adaptive_dllm.cli.arguments import (
        add_model_args,
        add_sampler_args,
        add_sparse_args,
        seed,
    )

    p = subparsers.add_parser(
        "generate",
        help="generate text with a diffusion LM",
        description="Generate a continuation of PROMPT by iterative unmasking (LLaDA or Dream "
                    "sampler, picked by the model's family). Defaults are those of ad.generate, "
                    "so both give the same text.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", metavar="PROMPT",
                   help="prompt text ('-' reads standard input); any bytes for the byte-level "
                        "bundled model, UTF-8 for other tokenizers")
    add_model_args(p)
    p.add_argument("--ids", action="store_true",
                   help="PROMPT is token ids separated by spaces or commas (no tokenizer needed)")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the chat template")
    p.add_argument("--history", metavar="FILE", help="write every step's tokens as JSON")
    p.add_argument("--history-gif", metavar="FILE", help="write an animation of the steps")
    p.add_argument("--seed", type=seed, metavar="S", help="random seed, 0 to 2**64 - 1")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {ids, text, stats} and no progress bar")
    add_sampler_args(p)
    add_sparse_args(p)
    p.set_defaults(func=run)


def _read_prompt(prompt: str) -> str:
    """PROMPT, or standard input for '-', read as bytes: a byte that is not UTF-8 is kept as a
    lone surrogate (as Python does for argv), for the byte tokenizer to restore."""
    if prompt != "-":
        return prompt
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stand-in (tests, embedding)
        return sys.stdin.read()
    return stream.read().decode("utf-8", errors="surrogateescape")


def _input_files(args: argparse.Namespace) -> list[str | Path | None]:
    """What this run reads and an output must not overwrite: the importance file and the files
    of a model directory."""
    model = Path(args.model).expanduser() if args.model else None
    files = sorted(model.iterdir()) if model is not None and model.is_dir() else []
    return [args.importance, *files]


def run(args: argparse.Namespace) -> int:
    from adaptive_dllm._io import check_output_path, dumps_json
    from adaptive_dllm.cli.arguments import (
        check_steps,
        default_gen_length,
        load_model,
        sampler_options,
        sparse_config_from_args,
    )
    from adaptive_dllm.cli.plots import check_plot
    from adaptive_dllm.generation.api import generate
    from adaptive_dllm.sparsity.stats import summary_stats

    check_steps(args.steps, args.gen_length or default_gen_length())
    prompt_text = _read_prompt(args.prompt)
    prompt: Any = _parse_ids(prompt_text) if args.ids else prompt_text
    options = sampler_options(args)
    sparse = sparse_config_from_args(args)
    inputs = _input_files(args)
    if args.history is not None:  # before the model loads, not after the generation
        check_output_path(args.history, flag="--history", inputs=inputs)
    if args.history_gif is not None:
        check_plot(args.history_gif, flag="--history-gif", formats=("gif",),
                   inputs=[*inputs, args.history])
    try:
        model, tokenizer = load_model(args)
    except CheckpointError as err:
        if args.model is None:
            raise AdllmError(f"the bundled model is missing or unreadable ({err}); "
                             "pass --model DIR") from err
        raise
    if tokenizer is None and not args.ids:
        raise AdllmError(f"model {args.model!r} has no tokenizer; pass token ids with --ids")
    warning = None
    if getattr(model, "untrained", False):
        warning = "the model is untrained: its output is noise"
        print(f"adllm generate: warning: {warning}", file=sys.stderr)

    bar = _progress_bar(enabled=not args.json and sys.stderr.isatty())
    try:
        out = generate(model, tokenizer, prompt, chat=args.chat, seed=args.seed, sparse=sparse,
                       on_step=bar.update_to if bar else None,
                       **({"output_history": True} if args.history or args.history_gif else {}),
                       **options)
    finally:
        if bar:
            bar.close()

    _write_history(args, out, tokenizer, model.config.mask_id)
    ids = out.ids[0].tolist()
    if args.json:
        stats = {**out.stats, **summary_stats(out.stats.get("sparse"), out.stats["steps"])}
        record: dict[str, Any] = {"ids": ids, "text": out.text, "stats": stats}
        if warning:
            record["warning"] = warning
        print(dumps_json(record, default=str))
    else:
        print(out.text if out.text is not None else " ".join(map(str, ids)))
        print(_summary_line(out.stats, sparse), file=sys.stderr)
    return 0


def _summary_line(s: dict[str, Any], sparse: Any) -> str:
    from adaptive_dllm.sparsity.stats import summary_stats

    summary = summary_stats(s.get("sparse"), s["steps"])
    attention = "dense attention"
    if sparse is not None:
        realised = summary["realized_keep_ratio"]
        kept = "no plan used" if realised is None else f"realised keep ratio {realised:.3f}"
        attention = (f"{sparse.mode} sparse via {summary['backend']} ({summary['dense_steps']} "
                     f"dense + {summary['sparse_steps']} sparse steps, {kept})")
        if summary.get("backend_reason"):
            attention += f"; {summary['backend_reason']}"
    return (f"[{s['steps']} steps ({s['tokens_per_forward']:.2f} tokens per forward, cache "
            f"{s['cache'] or 'off'}), {s['gen_length']} tokens, {s['total_s']:.2f} s, "
            f"{s['step_median_s'] * 1000:.1f} ms/step, {attention}]")


def _write_history(args: argparse.Namespace, out: Any, tokenizer: Any, mask_id: int) -> None:
    from adaptive_dllm.generation.history import (
        history_record,
        write_history_gif,
        write_history_json,
    )

    decode = None if tokenizer is None else tokenizer.decode
    if args.history:
        write_history_json(args.history, history_record(out.history, mask_id=mask_id,
                                                        decode=decode))
    if args.history_gif:
        write_history_gif(args.history_gif, out.history, mask_id=mask_id, decode=decode)


def _parse_ids(text: str) -> list[int]:
    parts = text.replace(",", " ").split()
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise AdllmError(f"--ids: PROMPT {text!r} must be integers separated by spaces or "
                         "commas") from None
    if not ids:
        raise AdllmError("--ids: PROMPT holds no token ids")
    return ids


class _Bar:
    """tqdm over denoising steps on stderr, created on the first update (total known then)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def update_to(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", file=sys.stderr, leave=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress_bar(*, enabled: bool) -> _Bar | None:
    return _Bar() if enabled else None
