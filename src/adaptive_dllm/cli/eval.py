"""``adllm eval``: evaluate a model. Subcommands: ``nll`` (held-out masked-token likelihood).

Each subcommand has a ``_register_<name>(sub)`` that adds its parser and sets ``eval_func``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
        help="evaluate a model (held-out likelihood)",
        description="Evaluate a model. Run `adllm eval SUBCOMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    _register_nll(sub)
    parser.set_defaults(func=run, eval_parser=parser)


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "eval_func", None)
    if func is None:
        args.eval_parser.print_help(sys.stderr)
        return 2
    return func(args)


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdllmError(f"--mask-ratios {text!r} is not a comma-separated list of numbers") from None
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise AdllmError(f"--mask-ratios {text!r}: each ratio must be in (0, 1]")
    return ratios


def _register_nll(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nll",
        help="masked-token NLL (bits per token) on held-out text",
        description="Masked-token negative log-likelihood of a diffusion LM at fixed mask ratios.",
        epilog=NLL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    p.add_argument("--text", type=Path, default=None,
                   help="UTF-8 text file to score (default: heldout.txt of the model directory)")
    p.add_argument("--mask-ratios", default="0.15,0.5,0.9", metavar="R[,R...]",
                   help="comma-separated mask ratios in (0, 1] (default: 0.15,0.5,0.9)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default: 0)")
    p.add_argument("--length", type=int, default=None,
                   help="passage length in tokens (default: min(1024, the model's maximum))")
    p.add_argument("--max-passages", type=int, default=None, help="score only the first N passages")
    p.add_argument("--batch-size", type=int, default=8, help="passages per forward (default: 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(eval_func=run_nll)


def run_nll(args: argparse.Namespace) -> int:
    import torch

    from adaptive_dllm.evaluation.data import split_passages
    from adaptive_dllm.evaluation.likelihood import masked_nll
    from adaptive_dllm.models.checkpoints import load
    from adaptive_dllm.models.tokenizer import ByteTokenizer

    ratios = _ratios(args.mask_ratios)
    if args.batch_size < 1:
        raise AdllmError(f"--batch-size {args.batch_size} must be at least 1")
    if args.max_passages is not None and args.max_passages < 1:
        raise AdllmError(f"--max-passages {args.max_passages} must be at least 1")
    if args.text is not None:
        _read_text(args.text)  # fail on a bad path before loading a large model
    model, tok = load(args.model, device=torch.device(args.device) if args.device else None,
                      dtype=args.dtype)
    directory = Path(model.source)
    if tok is None:
        raise AdllmError(f"model {str(directory)!r} has no tokenizer; it cannot score a text file")
    length = args.length if args.length is not None else min(1024, model.config.max_seq_len)
    if not 1 <= length <= model.config.max_seq_len:
        raise AdllmError(f"--length {length} must be in [1, {model.config.max_seq_len}] for this model")
    text_path = args.text if args.text is not None else directory / "heldout.txt"
    if args.text is None and not text_path.is_file():
        raise AdllmError(f"model {str(directory)!r} ships no heldout.txt; pass --text FILE")
    text = _read_text(text_path)
    passages = split_passages(tok.encode(text, add_special_tokens=False), length)
    if args.max_passages is not None:
        passages = passages[: args.max_passages]
    results = masked_nll(model, passages, ratios, seed=args.seed, batch_size=args.batch_size,
                         progress=not args.json and sys.stderr.isatty())
    unit = "byte" if isinstance(tok, ByteTokenizer) else "token"
    param = next(model.parameters())
    if args.json:
        print(json.dumps({
            "model": str(directory), "text": str(text_path), "unit": unit,
            "device": str(param.device), "dtype": str(param.dtype).removeprefix("torch."),
            "results": [r.to_dict() for r in results],
        }, indent=1))
        return 0
    print(f"model {directory}")
    print(f"text  {text_path}: {passages.shape[0]} passages of {passages.shape[1]} {unit}s, "
          f"seed {args.seed}, {param.device} {str(param.dtype).removeprefix('torch.')}")
    print(f"{'mask ratio':>10}  {'bits/' + unit:>10}  {'stderr':>7}  {'masked':>8}")
    for r in results:
        print(f"{r.mask_ratio:>10g}  {r.bits_per_token:>10.4f}  {r.stderr:>7.4f}  {r.n_masked:>8}")
    return 0


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise AdllmError(f"text file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise AdllmError(f"cannot read {str(path)!r} as UTF-8 text ({err})") from None
