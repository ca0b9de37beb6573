"""Evaluation: held-out likelihood of the bundled model and fidelity of sparse to dense attention."""

from adaptive_dllm.evaluation.data import HELDOUT_WORKS, read_works, split_passages, split_works
from adaptive_dllm.evaluation.fidelity import FidelitySettings, evaluate_fidelity
from adaptive_dllm.evaluation.likelihood import NLLResult, mask_count, masked_nll

__all__ = [
    "HELDOUT_WORKS",
    "FidelitySettings",
    "NLLResult",
    "evaluate_fidelity",
    "mask_count",
    "masked_nll",
    "read_works",
    "split_passages",
    "split_works",
]
