"""What the Triton kernels support, importable without triton: block sizes, head-dim limit,
launch options, availability and the 32-bit offset guard.

Shape legend: L sequence length, bs block size, N = ceil(L / bs) blocks, D head dim,
Dp = padded head dim (the power of two >= max(16, D) a kernel tile spans).

This is the **one** list of block sizes (:data:`BLOCK_SIZES`): the attention backends, the
scoring and build kernels, ``SparseConfig`` and the CLI all read it. Adding a block size means
adding it here and giving it launch options in :data:`BLOCK_SPARSE_LAUNCH` (and a flex tile in
``attention/flex.py``'s options when flex should run it).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from adaptive_dllm.errors import AdllmError

logger = logging.getLogger(__name__)

#: Block sizes the Triton kernels and the flex backend run (the block is the kernel tile:
#: smaller blocks are slower). The eager reference backend also takes other powers of two.
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128)
#: Largest head dim the kernels take (the (block, head dim) tiles must fit shared memory).
MAX_HEAD_DIM = 128
#: Pipeline stages that fit Hopper's 227 KiB of shared memory with 4-byte (float32) tiles at head
#: dim 128 (checked by compiling for sm_90: 1 stage at block 128 takes 192 KiB, 2 take 320 KiB).
FP32_MAX_STAGES: Mapping[int, int] = MappingProxyType({128: 1, 64: 2, 32: 3, 16: 3})


@dataclass(frozen=True)
class LaunchOptions:
    """Triton launch options of one kernel at one block size."""

    num_warps: int
    num_stages: int

    def for_dtype(self, block_size: int, itemsize: int) -> dict[str, int]:
        """The options as launch keywords, with fewer stages for 4-byte (float32) tiles."""
        stages = self.num_stages
        if itemsize > 2:
            stages = min(stages, FP32_MAX_STAGES[block_size])
        return {"num_warps": self.num_warps, "num_stages": stages}


#: Block-sparse attention launch options per block size; 128 was tuned on an H100 at 64k.
BLOCK_SPARSE_LAUNCH: Mapping[int, LaunchOptions] = MappingProxyType({
    128: LaunchOptions(num_warps=8, num_stages=3),
    64: LaunchOptions(num_warps=4, num_stages=3),
    32: LaunchOptions(num_warps=4, num_stages=3),
    16: LaunchOptions(num_warps=4, num_stages=2),
})


def check_covers_block_sizes(options: Mapping[int, Any], *, what: str) -> None:
    """One-line error unless the per-block-size ``options`` (named ``what``) have an entry for
    every one of :data:`BLOCK_SIZES`."""
    missing = [bs for bs in BLOCK_SIZES if bs not in options]
    if missing:
        raise AdllmError(f"{what} lacks block sizes {missing}; give options for each of "
                         f"{', '.join(map(str, BLOCK_SIZES))}")


def n_blocks(length: int, block_size: int) -> int:
    """N = ceil(L / bs): blocks that cover ``length`` tokens (the last one may be partial)."""
    return -(-length // block_size)


def padded_head_dim(head_dim: int) -> int:
    """Dp: the power of two >= max(16, D) that a kernel tile spans along the head dim (columns
    past D are masked loads of zeros)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def check_block_size(block_size: Any, *, supported: tuple[int, ...], who: str, hint: str) -> None:
    """One-line error unless ``block_size`` is one of ``supported`` (by ``who``)."""
    if block_size not in supported:
        raise AdllmError(f"block_size={block_size!r} is not supported by {who}; use one of "
                         f"{', '.join(map(str, supported))}{hint}")


def check_head_dim(head_dim: int, *, who: str, hint: str) -> None:
    """One-line error when ``head_dim`` is above :data:`MAX_HEAD_DIM`."""
    if head_dim > MAX_HEAD_DIM:
        raise AdllmError(f"head dim {head_dim} is larger than the {MAX_HEAD_DIM} {who} takes; "
                         f"{hint}")


@functools.cache
def triton_available() -> bool:
    """Whether triton can be imported: the project's Triton kernels (block scoring, fused
    RMSNorm/RoPE/SwiGLU) run on CUDA only then; without it the torch code runs instead."""
    found = importlib.util.find_spec("triton") is not None
    if not found:
        logger.info("triton is not installed: block scoring and the fused element-wise kernels "
                    "run as torch code")
    return found


def triton_device_problem(device_type: str) -> str | None:
    """Why the Triton kernels cannot run on ``device_type`` (None when they can): they need
    triton and a CUDA GPU, or Triton's CPU interpreter (``TRITON_INTERPRET=1``, for tests)."""
    if not triton_available():
        return ("backend 'triton' needs the triton package (pip install triton); use backend "
                "'reference' without it")
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (f"backend 'triton' runs on a CUDA GPU, not on {device_type}; use backend "
                f"'reference' (or 'auto') there")
    return None


def check_offsets(seq_len: int, *tensors: Any, extra: int = 0) -> None:
    """One-line error when 32-bit in-kernel offsets could overflow: a row offset times a tensor's
    row stride (dim 2), or ``extra`` (e.g. N * L of a block-logsumexp scratch), reaches 2^31."""
    worst = max([seq_len * t.stride(2) + t.shape[-1] for t in tensors] + [extra])
    if worst >= 2**31:
        raise AdllmError(f"sequence of {seq_len} tokens is too long for the 32-bit offsets of the "
                         f"Triton kernels (offset {worst} >= 2^31); use backend 'flex' or shorter "
                         f"inputs")
