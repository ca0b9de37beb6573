"""Writing files that are never lost or half-written, and JSON that is strict.

Every command that writes follows one rule (DESIGN §4, issue "trustworthy by default"):

1. **Validate before the work.** :func:`check_output_path` runs when arguments are parsed, so a
   bad ``--out`` fails in a second, not after an hour of HeadIG: the parent directory must exist,
   the path must not be a directory, and it must not be one of the command's own inputs.
2. **Write atomically.** :func:`atomic_write` writes to a unique temporary file in the same
   directory, fsyncs it and renames it over the target. A reader sees the old file or the new
   one, never a torn one; concurrent writers never share a temporary name. The file gets the
   permissions ``open()`` would give it (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
3. **Strict JSON.** :func:`dumps_json` turns non-finite floats (NaN, +-Inf) into ``null`` instead
   of printing ``NaN``, which no strict JSON parser accepts. Tensors and numpy scalars become
   plain numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from adaptive_dllm.errors import AdllmError

__all__ = ["atomic_write", "check_output_path", "dumps_json", "finite_or_none", "to_jsonable",
           "write_json", "write_text"]


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike[str], *, flag: str = "--out",
                      inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Validate an output path before any work is done; return it as a :class:`Path`.

    Raises:
        AdllmError: the parent directory is missing or is not a directory, the path is a
            directory, or it names one of ``inputs`` (same file, also through links).
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise AdllmError(f"{flag} {out} is a directory; give a file name inside it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise AdllmError(f"{flag} {out}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise AdllmError(f"{flag} {out}: {parent} is not a directory; choose another path")
    for source in inputs:
        if source is None:
            continue
        src = Path(source).expanduser()
        same = src.exists() and out.exists() and os.path.samefile(src, out)
        if same or src.resolve() == out.resolve():
            raise AdllmError(f"{flag} {out} is also an input of this command; "
                             "write to another file so the input is not overwritten")
    return out


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *,
                 encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_write(path) as handle:
        handle.write(text)


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` accepts with ``allow_nan=False``.

    Non-finite floats become None; tensors, numpy arrays and scalars become lists and numbers;
    tuples become lists; paths become strings; dataclasses with ``to_dict`` are expanded.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj``: non-finite numbers are ``null`` (see :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as strict JSON followed by a newline."""
    write_text(path, dumps_json(obj, indent=indent) + "\n")
