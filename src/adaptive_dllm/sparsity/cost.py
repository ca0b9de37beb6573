"""When sparse attention pays off: the cost model behind ``backend="auto"`` (DESIGN §3 "Never slower").

Per layer and step, dense attention costs ``A(L)``. A sparse step costs about
``select * A(L) / efficiency`` (``efficiency`` = throughput of the sparse kernel per kept block
relative to the fastest dense kernel), and the plan build costs about ``build_cost * A(L)`` once.
Sparse pays off when

    sparse_steps * A * (1 - select / efficiency) > build_cost * A    and    L >= min_seq_len,

where ``min_seq_len`` is the measured length below which fixed overheads (index arrays, launch and
guard costs, the plan build on short inputs) make the sparse step no faster than dense on the GPU.
The numbers below were measured on an H100 (``benchmarks/README.md``, bf16, block 128, select 0.3):
the flex kernel loses to cuDNN at 4k tokens (0.71x LLaDA, 0.88x Dream) and wins from 8k (1.3-1.5x);
its efficiency per kept block relative to cuDNN is 0.43 (8k), 0.56 (16k), 0.75 (64k); the plan
build costs 3.4 (8k), 2.3 (16k), 1.05 (64k) dense attentions of the same layer. Anything the model
rejects runs dense, and the session's stats say ``backend: "dense"`` with the reason.

On the CPU there is no fast sparse kernel (the reference backend materialises L x L), so ``auto``
runs dense there; ``backend="reference"`` or ``"flex"`` force a sparse run (tests, debugging).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Which kernel a generation uses, and why (reported in the stats)."""

    backend: str  # "dense", "triton", "flex" or "reference"
    reason: str


@dataclass(frozen=True)
class CostModel:
    """Break-even model for block-sparse attention (defaults measured on an H100, bf16).

    Attributes:
        min_seq_len: Shortest sequence (tokens) for which the sparse step is faster than dense.
        efficiency: Sparse-kernel throughput per kept block relative to the fastest dense SDPA.
        build_cost: Plan build (scoring + allocation + BlockMask) in units of one dense attention.
        sparse_backend: The backend a generation that pays off runs.
    """

    min_seq_len: int = 8192
    efficiency: float = 0.6
    build_cost: float = 2.0
    sparse_backend: str = "triton"

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
            return Decision("dense", f"sequence of {seq_len} tokens is below the break-even "
                                     f"length of {self.min_seq_len} tokens measured on an H100")
        ratio = select / self.efficiency
        if ratio >= 1.0:
            return Decision("dense", f"select={select:g} keeps too much: a sparse step would "
                                     f"cost {ratio:.2f}x a dense one")
        gain = sparse_steps * (1.0 - ratio) - self.build_cost
        if gain <= 0:
            return Decision("dense", f"{sparse_steps} sparse step(s) cannot pay back the plan "
                                     f"build ({self.build_cost:g} dense attentions)")
        return Decision(self.sparse_backend, f"predicted sparse attention {ratio:.2f}x of dense per step, "
                                f"{sparse_steps} sparse steps")
