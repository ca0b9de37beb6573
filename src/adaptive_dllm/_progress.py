"""Progress reports on stderr that also work in logs, for every long-running command.

On a terminal :func:`progress_bar` is a tqdm bar. When stderr is not a terminal (a log file,
``| tee``, a batch job), a redrawn bar would be one endless line of carriage returns, so it
writes whole lines instead: one every time another tenth of the work is done or 30 seconds have
passed (whichever comes first), and a last one at the end::

    masked NLL: 30/100 passage (30%), 12 s elapsed, about 28 s left

Usage::

    with progress_bar(total=100, desc="masked NLL", unit="passage", enabled=not quiet) as bar:
        for ...:
            bar.update(1)
            bar.set_postfix_str("uniform 0.3")   # optional note, shown on the next line

``enabled=False`` returns an object with the same methods that writes nothing, so callers
never test for ``None``.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["LineProgress", "NoProgress", "progress_bar"]

#: A line at least every this many seconds (when there is progress to report).
LINE_INTERVAL_S = 30.0
#: ... and whenever another this fraction of the total is done.
LINE_FRACTION = 0.1


class NoProgress:
    """The disabled bar: every method does nothing."""

    n = 0
    total: int | None = None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def note(self, text: str) -> None:
        """Print one line of its own (an estimate, a warning) without breaking the bar."""

    def close(self) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineProgress(NoProgress):
    """Whole progress lines for non-terminals: every ``LINE_FRACTION`` or ``LINE_INTERVAL_S``."""

    def __init__(self, total: int | None, *, desc: str, unit: str, file: IO[str],
                 clock: Any = time.monotonic, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.file, self._clock = total, desc, unit, file, clock
        self.n = self._first = self._last_n = initial  # a resumed run starts part-way
        self.postfix = ""
        self._start = self._last_time = clock()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        step = max(1.0, (self.total or 0) * LINE_FRACTION)
        if now - self._last_time >= LINE_INTERVAL_S or self.n - self._last_n >= step:
            self._write(now)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def note(self, text: str) -> None:
        self._emit(text)

    def close(self) -> None:
        if not self._closed and self.n != self._last_n:
            self._write(self._clock())
        self._closed = True

    def _write(self, now: float) -> None:
        elapsed = now - self._start
        done = f"{self.n}"
        left = ""
        if self.total:
            done += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if self._first < self.n < self.total:  # the rate of this run, not the resumed part
                rate = (self.n - self._first) / elapsed if elapsed > 0 else 0.0
                left = f", about {(self.total - self.n) / rate:.0f} s left" if rate else ""
        else:
            done += f" {self.unit}"
        note = f" [{self.postfix}]" if self.postfix else ""
        self._emit(f"{self.desc}: {done}, {elapsed:.0f} s elapsed{left}{note}")
        self._last_time, self._last_n = now, self.n

    def _emit(self, line: str) -> None:
        """One whole line, flushed at once so a log shows it while the work goes on."""
        self.file.write(line + "\n")
        self.file.flush()


def progress_bar(total: int | None, *, desc: str, unit: str = "it", enabled: bool = True,
                 leave: bool = True, file: IO[str] | None = None, initial: int = 0) -> Any:
    """A progress reporter on ``file`` (default stderr): tqdm on a terminal, whole lines
    otherwise, nothing when not ``enabled``. All three have ``update``, ``set_postfix_str``,
    ``set_description``, ``note`` (a line of its own), ``close`` and work as context managers;
    ``initial`` is the count already done (a resumed run)."""
    if not enabled:
        return NoProgress()
    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return _terminal_bar(total=total, desc=desc, unit=unit, leave=leave, file=stream,
                             initial=initial)
    return LineProgress(total, desc=desc, unit=unit, file=stream, initial=initial)


def _terminal_bar(**kwargs: Any) -> Any:
    """tqdm (imported only for a terminal) with :meth:`NoProgress.note`."""
    from tqdm import tqdm

    class TerminalBar(tqdm):  # type: ignore[misc]
        def note(self, text: str) -> None:
            self.write(text, file=self.fp)

    return TerminalBar(**kwargs)
