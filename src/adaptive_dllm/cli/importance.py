"""``adllm importance``: estimate, show, compare, average and import head-importance files.

Subcommands live in ``importance_estimate`` (estimate) and ``importance_files`` (show, compare,
average, import); each registers with ``register_<name>(sub)`` and sets ``importance_func``.
Shared parsing helpers live in :mod:`adaptive_dllm.cli.arguments`; the checks of importance
outputs in :mod:`adaptive_dllm.cli.importance_files`; import those from there, not from here.

Every subcommand that writes validates its output paths while parsing, before any work (parent
exists, not a directory, not one of its inputs), writes atomically with the umask's
permissions, and prints strict JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys

# Kept only for cli/eval_task.py, which still imports it from here; drop once that import moves
# to cli.arguments.

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from adaptive_dllm.cli import importance_estimate, importance_files

    parser = subparsers.add_parser(
        "importance",
        help="estimate, show, compare, average and import head-importance files",
        description="Head importance. Run `adllm importance SUBCOMMAND --help` for details.",
        epilog="examples:\n"
               "  adllm importance estimate --method entropy --data texts/ --block-size 32 "
               "--out heads.safetensors\n"
               "  adllm importance show heads.safetensors --plot heads.png\n"
               "  adllm importance compare a.safetensors b.safetensors --plot ab.png\n"
               "  adllm importance average s0.safetensors s1.safetensors --out mean.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="importance_command", metavar="SUBCOMMAND")
    importance_estimate.register_estimate(sub)
    importance_files.register_show(sub)
    importance_files.register_compare(sub)
    importance_files.register_average(sub)
    importance_files.register_import(sub)
    parser.set_defaults(func=run, importance_parser=parser)


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "importance_func", None)
    if func is None:
        args.importance_parser.print_help(sys.stderr)
        return 2
    return func(args)
