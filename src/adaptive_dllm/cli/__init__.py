"""``adllm``: the command-line tool.

Each subcommand lives in its own module ``adaptive_dllm.cli.<name>`` exposing
``register(subparsers)`` (adds its parser, with examples in the epilog, and sets
``func=run``) and ``run(args) -> int``. User errors (:class:`AdllmError`) print one line and
exit 2; set ``ADLLM_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from adaptive_dllm.errors import AdllmError

# Order = order in `adllm --help`.
COMMANDS = ("generate", "budget", "importance", "prune", "eval", "bench")


def package_version() -> str:
    """The installed distribution's version, or the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adaptive-dllm")
    except PackageNotFoundError:  # running from a source checkout (PYTHONPATH=src)
        from adaptive_dllm import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from adaptive_dllm.cli.arguments import OneLineParser

    parser = OneLineParser(
        prog="adllm",
        description="Diffusion LM inference with head-adaptive block-sparse attention.",
        epilog="Run `adllm COMMAND --help` for examples of each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"adllm {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"adaptive_dllm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help/--version exit 0; a usage error returns 2 like any other
        if done.code in (0, None):
            raise
        return done.code if isinstance(done.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        _leave_ranks()
        return code
    except AdllmError as err:
        if os.environ.get("ADLLM_DEBUG"):
            raise
        print(f"adllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `adllm budget ... | head`
        # Python would complain again when flushing stdout at exit; point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _leave_ranks() -> None:
    # Only a command that joined a torchrun job has torch.distributed loaded; others skip the
    # import. After a failure the ranks exit without this (a barrier could wait forever).
    if "torch.distributed" in sys.modules:
        from adaptive_dllm._distributed import leave_ranks

        leave_ranks()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
