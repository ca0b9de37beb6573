"""Options and checks shared by the ``adllm`` commands, so every command refuses the same bad
values with the same one-line message before doing any work.

- :class:`OneLineParser`: argparse errors as one line (``adllm generate: error: ...``), exit 2.
- ``type=`` converters: :func:`seed`, :func:`positive_int`, :func:`device`.
- :func:`add_model_args` / :func:`load_model`: ``--model``, ``--download``, ``--device``,
  ``--dtype``; a hub id is fetched only with ``--download``.
- :func:`check_steps`: the bound on ``--steps`` (see :data:`MAX_STEPS_PER_TOKEN`).
- :func:`check_plot` / :func:`save_plot`: ``--plot`` in a format matplotlib writes, validated
  first and written atomically.
- :func:`add_quiet`: ``--quiet`` turns the progress lines off.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from adaptive_dllm.errors import AdllmError

#: Seeds are unsigned 64-bit integers: torch.manual_seed takes 0 .. 2**64 - 1 (it also takes
#: negative values, but they alias large unsigned ones, so they are refused to keep one meaning).
SEED_MAX = 2**64 - 1
#: --steps is at most this many times the generated tokens. Beyond one token per step the extra
#: steps commit nothing new (LLaDA) or re-decide the same few masks (Dream); 16x leaves room for
#: experiments while a typo such as 100000000 fails at once instead of running for days.
MAX_STEPS_PER_TOKEN = 16


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def seed(text: str) -> int:
    """``type=`` for seeds: an integer in [0, 2**64 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"seed {text} is outside the unsigned 64-bit range [0, 2**64 - 1]; pick a smaller one")
    return value


def positive_int(text: str) -> int:
    """``type=`` for lengths and counts: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def device(text: str) -> str:
    """``type=`` for ``--device``: cpu, cuda, cuda:N or mps, and present on this machine."""
    from adaptive_dllm.models.checkpoints import resolve_device

    if text.strip().lower() == "gpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not a torch device; "
                                         "use --device cuda (or cuda:N for the N-th GPU)")
    try:
        resolve_device(text)
    except AdllmError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_model_args(p: argparse.ArgumentParser, *, dtypes: Iterable[str] | None = None) -> None:
    """``--model DIR``, ``--download``, ``--device``, ``--dtype``."""
    from adaptive_dllm.models.checkpoints import DTYPES

    p.add_argument("--model", default=None, metavar="DIR",
                   help="checkpoint directory (default: the bundled model); a Hugging Face hub "
                        "id (org/name) only with --download")
    p.add_argument("--download", action="store_true",
                   help="fetch --model from the Hugging Face hub when it is not a local directory")
    p.add_argument("--device", type=device, default=None,
                   help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=sorted(dtypes or DTYPES), default=None,
                   help="default bf16 on GPU, fp32 on CPU")


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, tokenizer) as :func:`add_model_args`'s options say."""
    from adaptive_dllm.models.checkpoints import load

    return load(args.model, device=args.device, dtype=args.dtype,
                download=getattr(args, "download", False))


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr (they are printed every ~10%% or 30 s)")


def check_steps(steps: int | None, gen_length: int, *, flag: str = "--steps") -> None:
    """Refuse ``steps`` outside [1, MAX_STEPS_PER_TOKEN * gen_length] (None = the default)."""
    if steps is None:
        return
    limit = MAX_STEPS_PER_TOKEN * gen_length
    if not 1 <= steps <= limit:
        raise AdllmError(f"{flag} {steps} must be in [1, {limit}] ({MAX_STEPS_PER_TOKEN} x the "
                         f"{gen_length} generated tokens); more steps than tokens add no quality")


def plot_formats() -> dict[str, str]:
    """File suffixes matplotlib can write here -> description."""
    from matplotlib.backend_bases import FigureCanvasBase

    return FigureCanvasBase.get_supported_filetypes()


def check_plot(path: str | os.PathLike[str] | None, *, flag: str = "--plot",
               inputs: Iterable[str | os.PathLike[str] | None] = (),
               formats: Iterable[str] | None = None) -> Path | None:
    """Validate a plot path before any work: a format matplotlib writes (or one of ``formats``)
    and a writable, new-or-replaceable output file. None passes through."""
    if path is None:
        return None
    from adaptive_dllm._io import check_output_path

    out = Path(path)
    allowed = sorted(formats) if formats is not None else sorted(plot_formats())
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in allowed:
        raise AdllmError(f"{flag} {str(out)!r}: {'no' if not suffix else repr(suffix)} file "
                         f"format; end the name in one of .{', .'.join(allowed)}")
    return check_output_path(out, flag=flag, inputs=inputs)


def save_plot(write: Callable[[Path], Any], path: str | os.PathLike[str]) -> Path:
    """Call ``write(temporary_path)`` and rename the result onto ``path`` (atomic)."""
    from adaptive_dllm._io import atomic_path

    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def join_ranks(args: argparse.Namespace) -> Any:
    """Join a torchrun job, if any (HeadIG shards its examples); this rank's device in args."""
    import torch

    from adaptive_dllm._distributed import init_ranks, rank_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = init_ranks(device)
    args.device = str(rank_device(ranks, device))
    return ranks
