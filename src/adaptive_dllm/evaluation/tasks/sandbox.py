"""Running model-written Python in a separate, limited process (the HumanEval harness).

Each program runs as ``sys.executable -I prog.py`` in its own process and its own fresh temporary
directory (its cwd, ``HOME`` and ``TMPDIR``; removed afterwards), with:

* **a wall-clock timeout**: on expiry the whole process group is killed (SIGKILL);
* **resource limits** set by a prelude at the top of the program, before any model-written line
  runs: address space (``RLIMIT_AS``, so unbounded allocation ends in ``MemoryError``), CPU
  seconds (``RLIMIT_CPU``), file size (``RLIMIT_FSIZE``), no core files (``RLIMIT_CORE`` 0) and
  no new processes (``RLIMIT_NPROC`` 0, which the kernel ignores for root). The limits are set
  in the child itself rather than through ``subprocess``'s ``preexec_fn`` because programs are
  launched from a thread pool, and ``preexec_fn`` is not safe when the parent has threads;
* **a stripped environment**: only ``PATH``, ``LANG``, ``HOME`` and ``TMPDIR``; ``-I`` also
  ignores every ``PYTHON*`` variable and the user's site-packages; stdin is closed;
* **no network**: the program runs under ``unshare -n`` (a new, empty network namespace) when
  that works on this machine (root, or ``unshare -rn`` where unprivileged user namespaces are
  allowed); the prelude also replaces ``socket.socket`` and friends by a function that raises,
  which is the only barrier where ``unshare`` is unavailable (:func:`network_isolation` says
  which applies).

This is a guard against accidents (infinite loops, runaway memory, stray files, network calls)
in code from a model under evaluation, not a security boundary against hostile code.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adaptive_dllm.errors import AdllmError

__all__ = ["Limits", "Outcome", "network_isolation", "run_program", "run_programs"]

Status = Literal["passed", "failed", "timeout"]
Isolation = Literal["unshare -n", "unshare -rn", "socket patch"]

_PRELUDE = """\
import resource as _r
for _k, _v in (("RLIMIT_AS", {memory}), ("RLIMIT_CPU", {cpu}), ("RLIMIT_FSIZE", {fsize}),
               ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 0)):
    if hasattr(_r, _k):
        try:
            _r.setrlimit(getattr(_r, _k), (_v, _v))
        except (ValueError, OSError):
            pass
import socket as _s
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the evaluation sandbox")
class _NoSocket(_s.socket):  # a class, so that modules subclassing socket.socket still import
    def __init__(self, *args, **kwargs):
        _no_network()
_s.socket = _s.SocketType = _NoSocket
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(_s, _name, _no_network)
del _r, _k, _v, _s, _name, _NoSocket
"""


@dataclass(frozen=True)
class Limits:
    """Limits of one program run.

    Attributes:
        timeout_s: wall-clock seconds before the process group is killed.
        memory_mb: address-space limit in MiB.
        cpu_s: CPU seconds (the kernel sends SIGXCPU, then SIGKILL).
        file_mb: largest file the program may write, in MiB.
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int = 10
    file_mb: int = 16

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "cpu_s", "file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise AdllmError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Outcome:
    """What became of one program: ``passed`` iff it exited with status 0 in time."""

    status: Status
    returncode: int | None
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def network_isolation() -> Isolation:
    """How programs are cut off from the network on this machine (module docstring)."""
    tool = shutil.which("unshare")
    if tool is not None:
        for flags in ("-n", "-rn"):
            try:
                done = subprocess.run([tool, flags, "true"], capture_output=True, timeout=10,
                                      stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                return "unshare -n" if flags == "-n" else "unshare -rn"
    return "socket patch"


def _command(script: Path) -> list[str]:
    isolation = network_isolation()
    prefix = [] if isolation == "socket patch" else isolation.split()
    return [*prefix, sys.executable, "-I", str(script)]


def run_program(source: str, *, limits: Limits | None = None) -> Outcome:
    """Run ``source`` under the limits; never raises for anything the program does."""
    limits = limits or Limits()
    prelude = _PRELUDE.format(memory=limits.memory_mb << 20, cpu=int(limits.cpu_s),
                              fsize=limits.file_mb << 20)
    with tempfile.TemporaryDirectory(prefix="adllm-sandbox-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(prelude + source, encoding="utf-8")
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp}
        proc = subprocess.Popen(_command(script), cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return Outcome("timeout", None, f"killed after {limits.timeout_s:g} s")
        _kill_group(proc)  # anything the program left running in its group
    tail = err.decode("utf-8", errors="replace")[-500:]
    return Outcome("passed" if proc.returncode == 0 else "failed", proc.returncode, tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_programs(sources: Sequence[str], *, limits: Limits | None = None,
                 workers: int | None = None) -> list[Outcome]:
    """:func:`run_program` of each source, ``workers`` at a time (default: the CPU count, at most
    8), results in input order."""
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise AdllmError(f"workers must be at least 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(functools.partial(run_program, limits=limits), sources))
