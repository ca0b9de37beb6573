"""Plot outputs of the CLI: which formats matplotlib writes, checked before any work, and
written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from adaptive_dllm.errors import AdllmError


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
