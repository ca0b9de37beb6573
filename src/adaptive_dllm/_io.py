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
import errno
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from adaptive_dllm.errors import AdllmError

__all__ = ["append_jsonl", "atomic_path", "atomic_write", "check_jsonl_append",
           "check_output_path", "dumps_json", "finite_or_none", "open_jsonl_append",
           "read_text_input", "to_jsonable", "write_json", "write_text"]


def _umask() -> int:
    # Linux reports the umask in /proc; elsewhere os.umask can only be read by setting it (which
    # another thread creating a file at that instant would see), so that is the fallback.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_path(path: str | os.PathLike[str], *, flag: str = "--out",
                      inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Validate an output path before any work is done; return it as a :class:`Path`.

    A link is followed: the file it points to is what gets written (the link stays).

    Raises:
        AdllmError: the parent directory is missing, not a directory or refuses a new file
            (tried, so that root and read-only mounts are covered too), the path is a directory
            or another non-regular file (a device, FIFO or socket, which an atomic rename
            would replace), or it names one of ``inputs`` (same file, also through links).
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise AdllmError(f"{flag} {out} is a directory; give a file name inside it")
    if out.exists() and not out.is_file():
        raise AdllmError(f"{flag} {out} is not a regular file (a device, FIFO or socket); "
                         "give the path of a file")
    real = Path(os.path.realpath(out))
    parent = real.parent
    if not parent.exists():
        raise AdllmError(f"{flag} {out}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise AdllmError(f"{flag} {out}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AdllmError(f"{flag} {out}: directory {parent} is not writable; choose another path")
    _probe_directory(parent, flag=flag, out=out)
    for source in inputs:
        if source is None:
            continue
        src = Path(source).expanduser()
        same = src.exists() and out.exists() and os.path.samefile(src, out)
        if same or src.resolve() == out.resolve():
            raise AdllmError(f"{flag} {out} is also an input of this command; "
                             "write to another file so the input is not overwritten")
    return out


def _probe_directory(parent: Path, *, flag: str, out: Path) -> None:
    # os.access says yes to root everywhere, even on /proc or a read-only mount: only creating
    # the temporary file the write will need tells.
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".adllm-probe.", suffix=".tmp")
    except OSError as err:
        raise AdllmError(f"{flag} {out}: cannot create a file in {parent} "
                         f"({err.strerror or err}); choose another path") from None
    os.close(fd)
    os.unlink(probe)


def _target(path: str | os.PathLike[str]) -> Path:
    """The file a write of ``path`` replaces: a link's target, so the link survives."""
    return Path(os.path.realpath(Path(path).expanduser()))


@contextlib.contextmanager
def _write_errors(path: str | os.PathLike[str], target: Path) -> Iterator[None]:
    """An OS error while writing (disk full, a mount gone read-only) as one line that names the
    path given (and a link's target) and says the old file is untouched."""
    try:
        yield
    except OSError as err:
        fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "choose another path"
        name = f"{path} (-> {target})" if Path(path).expanduser().is_symlink() else str(path)
        raise AdllmError(f"could not write {name} ({err.strerror or err}); the file was not "
                         f"changed: {fix}") from err


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *,
                 encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was; an OS error
    (disk full, read-only mount) becomes a one-line :class:`AdllmError`. A link ``path`` keeps
    being a link: the file it points to is replaced. ``mode`` is ``"w"`` (text) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    target = _target(path)
    with _write_errors(path, target):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with _replace_on_success(tmp, target):
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A unique temporary path next to ``path`` (same suffix) for writers that want a file name,
    such as matplotlib's ``savefig``; on success it is fsynced and renamed onto ``path``.

    The file gets the umask's permissions whatever its writer does (safetensors' ``save_file``
    creates files with mode 0o600). On an exception the temporary file is removed and ``path`` is
    left as it was.
    """
    target = _target(path)
    with _write_errors(path, target):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.",
                                   suffix=target.suffix or ".tmp")
        os.close(fd)
        os.unlink(tmp)  # the writer creates it with open()'s permissions
        with _replace_on_success(tmp, target):
            yield Path(tmp)
            with open(tmp, "rb+") as handle:
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
                os.fsync(handle.fileno())


@contextlib.contextmanager
def _replace_on_success(tmp: str, target: Path) -> Iterator[None]:
    """Rename the written, fsynced ``tmp`` onto ``target`` when the block succeeds (then fsync
    the directory so the rename is durable); remove ``tmp`` when it raises."""
    try:
        yield
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def check_jsonl_append(path: str | os.PathLike[str], *, flag: str = "--out",
                       is_own: Callable[[Any], bool],
                       inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """Validate a JSONL file that records will be appended to, before any work.

    The path passes :func:`check_output_path`; an existing file must be empty or hold only
    JSON lines for which ``is_own(record)`` is true, so that appending never corrupts a file of
    another kind (a ``.safetensors``, a report, someone's notes). An unterminated last line is
    what a killed writer leaves (:func:`append_jsonl`); it is accepted, and
    :func:`open_jsonl_append` drops it.

    Raises:
        AdllmError: as :func:`check_output_path`, or the file holds a line that is not one of
            this command's records.
    """
    out = check_output_path(path, flag=flag, inputs=inputs)
    if not out.exists():
        return out
    foreign = f"{flag} {out} exists and is not a JSONL file of these records; "
    fix = "give a new file name (records are only appended to a file of their own kind)"
    try:
        with open(out, "rb") as handle:
            records = 0
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    if not raw.endswith(b"\n") and records:
                        continue  # the cut last line of a killed run, after records of ours
                    raise AdllmError(f"{foreign}line {number} is not JSON; {fix}") from None
                records += 1
                if not is_own(record):
                    raise AdllmError(f"{foreign}line {number} is another kind of record; {fix}")
    except OSError as err:
        raise AdllmError(f"{flag} {out} cannot be read ({err.strerror or err})") from None
    return out


def open_jsonl_append(path: str | os.PathLike[str]) -> IO[str]:
    """``path`` opened to append JSON lines (check it with :func:`check_jsonl_append` first).

    An unterminated last line that is not JSON is a killed run's partial record: it is cut off.
    One that is JSON (a file saved without a final newline) is kept and ended with a newline.
    Either way the next record starts on a line of its own.
    """
    target = Path(path).expanduser()
    handle = open(target, "a+b")  # noqa: SIM115 - returned, wrapped below
    try:
        handle.seek(0)
        data = handle.read()
        if data and not data.endswith(b"\n"):
            tail = data[data.rfind(b"\n") + 1:]
            try:
                json.loads(tail)
                handle.write(b"\n")
            except ValueError:  # UnicodeDecodeError included
                handle.truncate(len(data) - len(tail))
            handle.flush()
    except BaseException:
        handle.close()
        raise
    return io.TextIOWrapper(handle, encoding="utf-8")


def append_jsonl(handle: IO[str], record: Any) -> None:
    """Append one strict-JSON line to an open text file and push it to disk.

    One ``write`` per record: a crash leaves whole lines, at most the last one cut short.
    """
    handle.write(dumps_json(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def read_text_input(path: str | os.PathLike[str], *, flag: str = "--text",
                    errors: Literal["surrogateescape", "replace"] = "surrogateescape") -> str:
    """A text input file as ``str``: UTF-8, with any other byte kept as a lone surrogate.

    ``surrogateescape`` (as Python does for ``argv``) keeps every byte: the byte-level
    tokenizer turns them back into the exact bytes, other tokenizers report the position of
    the first one (:func:`adaptive_dllm.models.tokenizer.check_text`); so a byte-level model
    scores any file, binary or not. ``errors="replace"`` reads text (calibration text and
    haystacks): other bytes become U+FFFD, and a file holding a NUL byte is refused as binary
    (replacing would silently turn it into noise).

    Raises:
        AdllmError: the path is missing, a directory or unreadable; with ``errors="replace"``,
            also a binary file (one holding a NUL byte).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise AdllmError(f"{flag} {str(file)!r} {what}; give a text file")
    try:
        data = file.read_bytes()
    except OSError as err:
        raise AdllmError(f"{flag} {str(file)!r} cannot be read ({err.strerror or err})") from None
    nul = data.find(b"\0") if errors == "replace" else -1
    if nul >= 0:  # read as text, where no encoding this library reads puts NUL bytes
        raise AdllmError(f"{flag} {str(file)!r} looks binary (a NUL byte at offset {nul}); "
                         "give a text file")
    return data.decode("utf-8", errors=errors)


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


def to_jsonable(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` accepts with ``allow_nan=False``.

    Non-finite floats become None; tensors, numpy arrays and scalars become lists and numbers;
    tuples become lists; paths become strings; dataclasses with ``to_dict`` are expanded.
    Anything else goes through ``default`` (e.g. ``str``) or is a :class:`TypeError`.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, default) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict(), default)
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(obj.tolist(), default)
    if default is not None:
        return to_jsonable(default(obj))
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def dumps_json(obj: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """Strict JSON text of ``obj``: non-finite numbers are ``null`` (see :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(obj, default), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as strict JSON followed by a newline."""
    write_text(path, dumps_json(obj, indent=indent) + "\n")
