"""``adllm importance``: estimate, show, compare, average and import head-importance files.

Subcommands live in ``importance_estimate`` (estimate) and ``importance_files`` (show, compare,
average, import); each registers with ``register_<name>(sub)`` and sets ``importance_func``.
This module holds the shared argument helpers.

Every subcommand that writes validates its output paths while parsing, before any work (parent
exists, not a directory, not one of its inputs), writes atomically with the umask's
permissions, and prints strict JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adaptive_dllm._io import check_output_path
from adaptive_dllm.errors import AdllmError

PLOT_SUFFIXES = (".png",)


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


# ---------------------------------------------------------------------------------------------
# parsing helpers


def floats(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AdllmError(f"{name} {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise AdllmError(f"{name} is empty")
    return values


def layer_range(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` (inclusive, negative from the end) or ``"A"`` -> (A, B)."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise AdllmError(f"--layers {text!r} must be FIRST:LAST (inclusive), e.g. 0:-1")


def add_model_args(p: argparse.ArgumentParser) -> None:
    from adaptive_dllm.cli.arguments import add_model_args as add  # --download, checked --device

    add(p)


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from adaptive_dllm.cli.arguments import load_model as load

    return load(args)


def out_stream(args: argparse.Namespace) -> Any:
    """Human-readable lines go to stderr when --json owns stdout."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


def check_artifact_out(path: Path, *, flag: str = "--out",
                       inputs: Iterable[str | Path | None] = ()) -> Path:
    """An importance file to write: ``.safetensors``, a writable place, not an input."""
    if path.suffix != ".safetensors":
        raise AdllmError(f"{flag} {path} must end in .safetensors")
    return check_output_path(path, flag=flag, inputs=inputs)


def check_plot_out(path: Path | None, *, inputs: Iterable[str | Path | None] = ()) -> Path | None:
    """A heatmap to write (None = no plot): a supported image suffix, a writable place."""
    if path is None:
        return None
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise AdllmError(f"--plot {path} must end in {' or '.join(PLOT_SUFFIXES)}")
    return check_output_path(path, flag="--plot", inputs=inputs)
