"""Timing primitives for benchmarks (DESIGN §5): CUDA events, medians, the fastest dense SDPA.

- :func:`time_fn` runs warm-up calls (excluded), then times each repeat with CUDA events (host
  clock on the CPU) and returns the median and all samples, in milliseconds.
- :func:`fastest_dense` measures every dense SDPA backend that accepts the inputs (flash, cuDNN,
  memory-efficient) in the same process and returns the fastest: the dense baseline.
- :func:`environment` is the metadata every JSON record carries (GPU, versions, git commit).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5, gpu_time: bool = False,
            device: str | torch.device | None = None) -> dict[str, Any]:
    """Median wall time of ``fn()`` on the current device, warm-up excluded.

    Args:
        gpu_time: on CUDA, measure the GPU's time alone: before each repeat the L2 cache is
            flushed and the GPU kept busy for about a millisecond, so the host enqueues ``fn``'s
            launches meanwhile and the events see only its kernels (as ``triton.testing.do_bench``
            does). Without it a call of a few dozen microseconds of GPU work times its host-side
            launch path instead. Ignored on the CPU.
        device: where ``fn`` works: CUDA events for a CUDA device, the host clock otherwise.
            None: CUDA events whenever CUDA is initialised (GPU benchmarks).

    Returns:
        ``{"median_ms", "min_ms", "samples_ms"}``.
    """
    for _ in range(warmup):
        fn()
    if device is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    else:
        cuda = torch.device(device).type == "cuda"
    # Allocated per call and freed on return: a cached buffer would sit in every later peak
    # memory reading of the process.
    flush = (torch.empty(256 * 2**20, dtype=torch.uint8, device=_cuda_device(device))
             if cuda and gpu_time else None)  # 256 MiB: several times Hopper's 50-60 MiB L2
    samples = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if flush is not None:
                flush.zero_()
                torch.cuda._sleep(_BUSY_CYCLES)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000.0)
    del flush
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "samples_ms": samples}


_BUSY_CYCLES = 2_000_000  # about 1 ms at Hopper's ~2 GHz: longer than any launch path timed here


def _cuda_device(device: str | torch.device | None) -> torch.device:
    if device is None or torch.device(device).index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def sdpa_backends() -> dict[str, Any]:
    """Dense SDPA backends worth measuring, by name (those this torch build knows)."""
    from torch.nn.attention import SDPBackend

    names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "efficient": "EFFICIENT_ATTENTION"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


@contextlib.contextmanager
def sdpa_backend(name: str | None) -> Iterator[None]:
    """Restrict ``F.scaled_dot_product_attention`` to one backend (None = PyTorch's choice)."""
    if name is None:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([sdpa_backends()[name]]):
        yield


def fastest_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, warmup: int = 2,
                  repeats: int = 5, gpu_time: bool = False) -> dict[str, Any]:
    """Time dense SDPA with each backend; the fastest is the baseline (``gpu_time``: see
    :func:`time_fn`).

    Returns:
        ``{"best": name, "best_ms": float, "backends": {name: median_ms or error string}}``.
    """
    gqa = q.shape[1] != k.shape[1]
    results: dict[str, Any] = {}
    for name in sdpa_backends():
        try:
            with sdpa_backend(name):
                t = time_fn(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa),
                            warmup=warmup, repeats=repeats, gpu_time=gpu_time, device=q.device)
            results[name] = t["median_ms"]
        except RuntimeError as err:  # backend refuses these inputs (dtype, GQA, head dim)
            results[name] = f"unavailable: {str(err).splitlines()[0][:120]}"
    timed = {k: v for k, v in results.items() if isinstance(v, float)}
    if not timed:
        raise RuntimeError(f"no dense SDPA backend ran: {results}")
    best = min(timed, key=timed.get)
    return {"best": best, "best_ms": timed[best], "backends": results}


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` once and return (its result, peak allocated CUDA bytes during it)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated()


def environment() -> dict[str, Any]:
    """GPU, library versions and git commit for a benchmark record."""
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
    else:
        info["gpu"] = None
    info["git_commit"] = git_commit()
    return info


def git_commit() -> str | None:
    """The checkout's short commit; ``ADLLM_GIT_COMMIT`` overrides it for a copy of the tree whose
    git metadata is older than its files (a device machine may receive such a copy)."""
    if os.environ.get("ADLLM_GIT_COMMIT"):
        return os.environ["ADLLM_GIT_COMMIT"]
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
