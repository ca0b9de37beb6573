"""Evaluation: held-out likelihood of the bundled model (and, later, fidelity to dense)."""

from adaptive_dllm.evaluation.data import HELDOUT_WORKS, read_works, split_passages, split_works
from adaptive_dllm.evaluation.likelihood import NLLResult, mask_count, masked_nll

__all__ = [
    "HELDOUT_WORKS",
    "NLLResult",
    "mask_count",
    "masked_nll",
    "read_works",
    "split_passages",
    "split_works",
]
