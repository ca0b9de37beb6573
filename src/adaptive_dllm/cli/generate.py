"""``adllm generate``: sample a continuation of one prompt, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, get_args

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

LLaDA options: --steps --gen-length --block-length --temperature --cfg-scale --remasking
Dream options: --steps --gen-length --alg --alg-temp --eps --temperature --top-p --top-k
               --block-length
Both: --cache --threshold (docs/cache.md)
An option the model's sampler does not have is an error.
"""

# LLaDA's published chat examples decode in 32-token blocks; one block over the whole generation
# (the library default, as upstream's generate()) degrades into repetition on the bundled model.
DEFAULT_BLOCK = 32

# CLI flag dest -> generate() option name; only flags the user set are passed on.
_OPTIONS = ("steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
            "alg", "alg_temp", "eps", "top_p", "top_k", "cache", "threshold")


def register(subparsers: argparse._SubParsersAction) -> None:
    from adaptive_dllm.generation.dream import Algorithm
    from adaptive_dllm.generation.llada import Remasking
    from adaptive_dllm.models.checkpoints import DTYPES
    from adaptive_dllm.sparsity.cli_args import add_sparse_arguments

    p = subparsers.add_parser(
        "generate",
        help="generate text with a diffusion LM",
        description="Generate a continuation of PROMPT by iterative unmasking (LLaDA or Dream "
                    "sampler, picked by the model's family).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", metavar="PROMPT", help="prompt text ('-' reads standard input)")
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: bundled model)")
    p.add_argument("--ids", action="store_true",
                   help="PROMPT is token ids separated by spaces or commas (no tokenizer needed)")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the chat template")
    p.add_argument("--steps", type=int, metavar="N", help="denoising steps (default gen-length)")
    p.add_argument("--gen-length", type=int, metavar="N", help="tokens to generate (default 128)")
    p.add_argument("--block-length", type=int, metavar="N",
                   help=f"semi-autoregressive block (LLaDA default {DEFAULT_BLOCK} when it divides "
                        "the generation length, else the whole generation; Dream: one pass)")
    p.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default)")
    p.add_argument("--remasking", choices=get_args(Remasking), help="LLaDA remasking")
    p.add_argument("--cfg-scale", type=float, metavar="S", help="LLaDA classifier-free guidance")
    p.add_argument("--alg", choices=get_args(Algorithm), help="Dream unmasking order")
    p.add_argument("--alg-temp", type=float, metavar="T", help="Dream position-sampling temp")
    p.add_argument("--eps", type=float, help="Dream final noise level (default 1e-3)")
    p.add_argument("--top-p", type=float, metavar="P", help="Dream nucleus filtering")
    p.add_argument("--top-k", type=int, metavar="K", help="Dream top-k filtering")
    p.add_argument("--cache", choices=("prefix", "dual"),
                   help="approximate K/V cache refreshed once per block (default: none)")
    p.add_argument("--threshold", type=float, metavar="TAU",
                   help="parallel decoding: commit every token more confident than TAU")
    p.add_argument("--history", metavar="FILE", help="write every step's tokens as JSON")
    p.add_argument("--history-gif", metavar="FILE", help="write an animation of the steps")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {ids, text, stats} and no progress bar")
    add_sparse_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptive_dllm.generation.api import generate
    from adaptive_dllm.generation.history import check_writable
    from adaptive_dllm.models.checkpoints import load
    from adaptive_dllm.models.families import get_family
    from adaptive_dllm.sparsity.cli_args import sparse_config_from_args, summary_stats

    prompt_text = sys.stdin.read() if args.prompt == "-" else args.prompt
    prompt: Any = _parse_ids(prompt_text) if args.ids else prompt_text
    options = {name: getattr(args, name) for name in _OPTIONS if getattr(args, name) is not None}
    sparse = sparse_config_from_args(args)
    for path in (args.history, args.history_gif):
        if path is not None:
            check_writable(path)  # before the model loads, not after the generation
    try:
        model, tokenizer = load(args.model, device=args.device, dtype=args.dtype)
    except CheckpointError as err:
        if args.model is None:
            raise AdllmError(f"the bundled model is missing or unreadable ({err}); "
                             "pass --model DIR") from err
        raise
    if tokenizer is None and not args.ids:
        raise AdllmError(f"model {args.model!r} has no tokenizer; pass token ids with --ids")
    if get_family(model.config.family).sampler == "llada" and "block_length" not in options:
        gen_length = options.get("gen_length", 128)
        if gen_length % DEFAULT_BLOCK == 0:
            options["block_length"] = DEFAULT_BLOCK
    warning = None
    if getattr(model, "untrained", False):
        warning = "the model is untrained: its output is noise"
        print(f"adllm generate: warning: {warning}", file=sys.stderr)

    bar = _progress_bar(enabled=not args.json and sys.stderr.isatty())
    try:
        out = generate(model, tokenizer, prompt, chat=args.chat, seed=args.seed, sparse=sparse,
                       on_step=bar.update_to if bar else None,
                       output_history=bool(args.history or args.history_gif), **options)
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
        print(json.dumps(record, default=_to_json))
    else:
        print(out.text if out.text is not None else " ".join(map(str, ids)))
        s = out.stats
        summary = summary_stats(s.get("sparse"), s["steps"])
        attention = "dense attention"
        if sparse is not None:
            realised = summary["realized_keep_ratio"]
            kept = "no plan used" if realised is None else f"realised keep ratio {realised:.3f}"
            attention = (f"{sparse.mode} sparse via {summary['backend']} ({summary['dense_steps']} "
                         f"dense + {summary['sparse_steps']} sparse steps, {kept})")
            if summary.get("backend_reason"):
                attention += f"; {summary['backend_reason']}"
        print(f"[{s['steps']} steps ({s['tokens_per_forward']:.2f} tokens per forward, cache "
              f"{s['cache'] or 'off'}), {s['gen_length']} tokens, {s['total_s']:.2f} s, "
              f"{s['step_median_s'] * 1000:.1f} ms/step, {attention}]", file=sys.stderr)
    return 0


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


def _to_json(value: Any) -> Any:
    """JSON fallback for session stats: tensors become numbers or lists, the rest strings."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


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
