"""When sparse attention pays off: the cost model behind ``backend="auto"`` (DESIGN §3 "Never slower").

Per layer and step, dense attention costs ``A(L)``. A sparse step costs about
``select * A(L) / efficiency`` (``efficiency`` = throughput of the sparse kernel per kept block
relative to the fastest dense kernel), and the plan build costs about ``build_cost * A(L)`` once.
Sparse pays off when

    sparse_steps * A * (1 - select / efficiency(L)) > build_cost(L) * A   and   L >= min_seq_len,

where ``min_seq_len`` is the shortest length measured to gain. The default points
(:data:`EFFICIENCY_POINTS`, :data:`BUILD_COST_POINTS`) come from the H100 measurements of the
``triton`` kernel and the fused build in ``benchmarks/README.md`` (bf16, block 128, select 0.3);
below the shortest measured length ``auto`` stays dense.
``efficiency(L)`` and ``build_cost(L)`` interpolate those measurements in log(L). Anything the
model rejects runs dense, and the session's stats say ``backend: "dense"`` with
the reason.

On the CPU there is no fast sparse kernel (the reference backend materialises L x L), so ``auto``
runs dense there; ``backend="reference"`` forces a sparse run (tests, debugging).

**Cached steps** (an approximate K/V cache, ``generation/cached_sparse.py``) are a different
regime: W queries over Lk cached keys, memory-bound. With ``t = kv_bytes / bandwidth`` the time
to read one layer's cached K/V once, a dense cached step costs about ``group * t`` (dense SDPA
reads each KV head's K/V once per query head of its group: measured, ``benchmarks/README.md``),
the GQA-native decode kernel about ``select * t + overhead_s`` (its fixed cost), and every
refresh builds the decode plan (the window's exact attention mass, ``build_reads * t``). The
cached steps of a block run sparse only when

    cached_steps * (group * t - select * t - overhead_s) > build_reads * t,

so short caches (t of a few microseconds) stay dense. :class:`DecodeCost`'s bandwidth is the
H200's copy rate; its overhead is the kernel's fixed GPU time measured on an H100 (about
20 us); ``benchmarks/README.md`` has the records and says how to refit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adaptive_dllm._checks import check_int
from adaptive_dllm.errors import AdllmError


@dataclass(frozen=True)
class Decision:
    """Which kernel a generation uses, and why (reported in the stats)."""

    backend: str  # "dense", "triton", "flex" or "reference"
    reason: str


#: (tokens, value) points measured on an H100 (bf16, block 128, select 0.3, ``triton`` kernel,
#: fused build; ``benchmarks/README.md``): per-kept-block throughput relative to cuDNN (the lower
#: of LLaDA and Dream) and the plan build in dense attentions of one layer (the higher).
EFFICIENCY_POINTS: tuple[tuple[int, float], ...] = ((4096, 0.38), (16384, 0.68), (65536, 0.75))
BUILD_COST_POINTS: tuple[tuple[int, float], ...] = ((4096, 5.0), (16384, 0.69), (65536, 0.37))


@dataclass(frozen=True)
class DecodeCost:
    """Cost constants of cached steps (see the module doc).

    Attributes:
        bandwidth: Bytes per second at which K/V stream from memory (4.3e12: the H200's measured
            copy rate quoted in issue 14; the dense LLaDA cached step at 64k reached 4.0 TB/s
            there).
        overhead_s: Fixed seconds a sparse cached step adds: the decode kernel's GPU time at 4k
            keys, keep 0.3, is 20-27 us on an H100, of which reading the kept K/V takes 1-7 us
            (``benchmarks/results/cache_h100_6594da7/``).
        build_reads: The decode-plan build at a refresh, in reads of the cached K/V (the exact
            window mass is a float32 pass over K plus a softmax: a few reads). Not measured,
            and flat in the group size although the build's float32 scores grow with it (G * W
            rows per KV head): an underestimate for GQA models.
        threshold_cached_steps: Cached steps per block assumed under threshold decoding, whose
            count is unknown in advance (a block of 32 at 8 tokens per forward).
    """

    bandwidth: float = 4.3e12
    overhead_s: float = 2e-5
    build_reads: float = 4.0
    threshold_cached_steps: int = 4

    def __post_init__(self) -> None:
        if not (self.bandwidth > 0 and self.overhead_s >= 0 and self.build_reads >= 0
                and self.threshold_cached_steps >= 0):
            raise AdllmError(f"DecodeCost({self}) needs bandwidth > 0 and the other values >= 0")


@dataclass(frozen=True)
class CostModel:
    """Break-even model for block-sparse attention (defaults measured on an H100, bf16).

    Attributes:
        min_seq_len: Shortest sequence (tokens) measured to run faster sparse than dense.
        efficiency: (tokens, value) points of the sparse kernel's throughput per kept block
            relative to the fastest dense SDPA; interpolated in log(tokens), held flat outside.
        build_cost: (tokens, value) points of the plan build in units of one dense attention.
        sparse_backend: The backend a generation that pays off runs.
        decode: Constants of the cached-step decision (:meth:`decide_cached`).
    """

    min_seq_len: int = 4096
    efficiency: tuple[tuple[int, float], ...] = EFFICIENCY_POINTS
    build_cost: tuple[tuple[int, float], ...] = BUILD_COST_POINTS
    sparse_backend: str = "triton"
    decode: DecodeCost = DecodeCost()

    def __post_init__(self) -> None:
        for name in ("efficiency", "build_cost"):
            pts = getattr(self, name)
            xs = [x for x, _ in pts]
            if not pts or xs != sorted(set(xs)) or any(x <= 0 or y <= 0 for x, y in pts):
                raise AdllmError(f"CostModel.{name}={pts!r} must be (tokens, value) pairs with "
                                 f"positive values and increasing tokens")

    def decide(self, *, select: float, seq_len: int, device_type: str,
               sparse_steps: int) -> Decision:
        """Dense or :attr:`sparse_backend` for ``seq_len`` tokens (``backend="auto"``)."""
        if select >= 1.0:
            return Decision("dense", "select=1 keeps every block: dense attention is exact")
        if device_type != "cuda":
            return Decision("dense", f"no fast sparse kernel on {device_type}: the reference "
                                     "backend is slower than dense there")
        if sparse_steps < 1:
            return Decision("dense", "skip leaves no sparse step")
        if seq_len < self.min_seq_len:
            return Decision("dense", f"sequence of {seq_len} tokens is below {self.min_seq_len}, "
                                     "the shortest length measured faster sparse (H100)")
        ratio = select / _interpolate(self.efficiency, seq_len)
        if ratio >= 1.0:
            return Decision("dense", f"select={select:g} keeps too much: a sparse step would "
                                     f"cost {ratio:.2f}x a dense one at {seq_len} tokens")
        build = _interpolate(self.build_cost, seq_len)
        if sparse_steps * (1.0 - ratio) <= build:
            return Decision("dense", f"{sparse_steps} sparse step(s) cannot pay back the plan "
                                     f"build ({build:.2g} dense attentions)")
        return Decision(self.sparse_backend, f"predicted sparse attention {ratio:.2f}x of dense "
                                             f"per step, {sparse_steps} sparse steps")


    def decide_cached(self, *, refresh: Decision, select: float, kv_bytes: int,
                      cached_steps: int | None, group: int = 1) -> Decision:
        """Dense or the refreshes' sparse backend for the cached steps (``backend="auto"``).

        Args:
            refresh: The decision of the refresh forwards (:meth:`decide`); dense stays dense.
            select: Mean fraction of key blocks the decode plan keeps.
            kv_bytes: Bytes of one layer's cached K and V (2 * B * Hkv * Lk * D * itemsize).
            cached_steps: Cached steps per refresh (block), None under threshold decoding.
            group: Query heads per KV head (1 without GQA). Dense SDPA reads the K/V once per
                query head (Dream-7B, 7 per group: 585 GB/s counted once, ~4.1 TB/s counted
                per query head, on an H100 whose copy rate is 2.98 TB/s); the decode kernel
                reads them once per group.
        """
        check_int("group", group)
        if refresh.backend == "dense":
            return Decision("dense", "the refresh forwards run dense")
        d = self.decode
        assumed = ""
        if cached_steps is None:
            cached_steps = d.threshold_cached_steps
            assumed = " (assumed under threshold decoding)"
        if cached_steps < 1:
            return Decision("dense", "no cached step follows a refresh")
        once_s = kv_bytes / d.bandwidth  # one read of the layer's K/V
        dense_s = group * once_s
        saving = dense_s - (select * once_s + d.overhead_s)
        if saving <= 0:
            return Decision("dense", f"short cache: a dense cached step reads "
                                     f"{kv_bytes / 2**20:.0f} MiB of K/V"
                                     f"{f' x {group} query heads' if group > 1 else ''} "
                                     f"(~{dense_s * 1e6:.1f} us), too little for the decode "
                                     f"kernel's fixed ~{d.overhead_s * 1e6:.0f} us to pay off")
        if cached_steps * saving <= d.build_reads * once_s:
            return Decision("dense", f"{cached_steps} cached step(s) per block{assumed} cannot "
                                     f"pay back the decode-plan build (~{d.build_reads:g} reads "
                                     f"of the cached K/V)")
        return Decision(refresh.backend, f"predicted cached step {1 - saving / dense_s:.2f}x of "
                                         f"dense, {cached_steps} per block{assumed}")


def _interpolate(points: tuple[tuple[int, float], ...], seq_len: int) -> float:
    """Piecewise-linear in log(tokens) through ``points`` (sorted by tokens), flat outside."""
    if seq_len <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if seq_len <= x1:
            t = (math.log(seq_len) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return points[-1][1]
